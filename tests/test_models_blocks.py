"""The generic block-type backbone: every block type in every stage, and its validation."""

from __future__ import annotations

import pytest
import torch

from nas_asc.complexity import count
from nas_asc.models import create_model
from nas_asc.models.bcres2net import BCRes2Block
from nas_asc.models.bcresnet import BCResBlock
from nas_asc.models.blocks import BLOCKS
from nas_asc.models.bsconv import BSConvBlock
from nas_asc.models.mobilenetv2_ca import CoordAttention, InvertedResidual
from nas_asc.models.tfsepnet import TFSepConv

EXPECTED = {
    "tfsep": TFSepConv,
    "bcres": BCResBlock,
    "bsconv": BSConvBlock,
    "ir": InvertedResidual,
    "ir_ca": InvertedResidual,
    "res2": BCRes2Block,
}


def test_every_block_type_is_the_family_implementation():
    assert set(BLOCKS) == set(EXPECTED)


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_block_type_builds_in_each_stage(block, stage):
    cfg = {f"stage{stage}_block": block, f"stage{stage}_depth": 2}
    model = create_model("blocks", **cfg)
    blocks = [m for m in model.features if isinstance(m, EXPECTED[block])]
    assert len(blocks) >= 2
    has_ca = any(isinstance(m, CoordAttention) for m in model.modules())
    assert has_ca == (block == "ir_ca")
    out = model(torch.randn(2, 1, 32, 44))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_width_and_depth_change_the_count():
    small = count(create_model("blocks", stage3_width=16, stage3_depth=1), (1, 1, 64, 44))
    large = count(create_model("blocks", stage3_width=64, stage3_depth=3), (1, 1, 64, 44))
    assert small.params < large.params and small.macs < large.macs


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stage2_block", "conv", "unknown block 'conv' for stage 2"),
        ("stage1_width", 30, "stage1_width must be a positive multiple of 4"),
        ("stage3_depth", 0, "stage3_depth must be an integer >= 1"),
        ("stem_width", 2, "stem_width must be an integer >= 4"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_blocks_config_values_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        create_model("blocks", **{field: value})
