"""BC-Res2Net family (shared/seeds/004, Table 1 and the complexity of Table 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toydata import toy_set

from nas_asc.complexity import count
from nas_asc.models import (
    bcres2net,  # noqa: F401  (registers the family)
    create_model,
    get_model_config,
)
from nas_asc.models.bcres2net import BCRes2Block, BCRes2NetConfig
from nas_asc.models.layers import AdaResNorm, SubSpectralNorm
from nas_asc.search.space import load_space
from nas_asc.train.loop import TrainConfig, train
from nas_asc.train.quantize import quantize_ptq

# The student's input: 256 log-mel bins; 1 s at 32 kHz with hop 1024 gives 32 frames.
REPORT_INPUT = (1, 1, 256, 32)


def _transition_params(cin: int, cout: int, scale: int = 4, sub_bands: int = 4) -> int:
    """Hand count of a transition block (module docstring), all convs biased."""
    entry = cin * cout + cout + 2 * cout  # 1x1 conv + BatchNorm
    return entry + _normal_params(cout, scale, sub_bands) + cout * cout + cout  # + closing 1x1


def _normal_params(c: int, scale: int = 4, sub_bands: int = 4) -> int:
    """Hand count of a normal block: per group a (3,1) and a (1,3) conv w->w and an SSN."""
    w = c // scale
    return scale * (2 * (3 * w * w + w) + 2 * w * sub_bands)


# (cin, cout) of the C=24 student's blocks, stage by stage
STUDENT_BLOCKS = [(48, 24), (24, 24), (24, 36), (36, 36), (36, 48)] + [(48, 48)] * 3
STUDENT_BLOCKS += [(48, 60)] + [(60, 60)] * 3


@pytest.mark.parametrize(("cin", "cout"), sorted(set(STUDENT_BLOCKS)))
def test_blocks_match_the_hand_count(cin, cout):
    expected = _normal_params(cout) if cin == cout else _transition_params(cin, cout)
    assert count(BCRes2Block(cin, cout), (cin, 8, 8)).params == expected


def test_student_total_is_the_hand_count():
    stem = 48 * 25 + 48
    blocks = sum(
        _normal_params(b) if a == b else _transition_params(a, b) for a, b in STUDENT_BLOCKS
    )
    head = (60 * 3 * 25 + 60) + (60 * 96 + 96) + (96 * 10 + 10)  # 5x5 in 20 groups, 1x1, 1x1
    assert stem + blocks + head == 74_266
    assert count(create_model("bcres2net"), REPORT_INPUT).params == 74_266


def test_student_documents_the_gap_to_table3_parameters():
    # Table 3 lists 76,906 parameters. The authors' submitted model adds a BatchNorm over the
    # 256 input bins (512), "ResNorm" as x + BatchNorm over the frequency bins after the input
    # and the four stages (2 * (256 + 128 + 64 + 32 + 32) = 1,024) and four BatchNorms per
    # block that are built but never called (8 * C / 4 per block: 1,104 in all).
    unused = sum(8 * (b // 4) for _, b in STUDENT_BLOCKS)
    assert unused == 1_104
    c = count(create_model("bcres2net"), REPORT_INPUT)
    assert c.params + 512 + 1_024 + unused == 76_906
    assert c.param_bytes == c.params  # int8 everywhere; ResNorm has no parameters


def test_student_reproduces_table3_macs():
    c = count(create_model("bcres2net"), REPORT_INPUT)
    assert c.macs == 23_969_914
    assert round(c.macs / 1e6, 2) == 23.97


def test_head_groups_matter_for_the_macs():
    # Table 1 reads "Group=2.5C" (depthwise); that network would count 23.63 M, not 23.97 M.
    depthwise = count(create_model("bcres2net", head_groups=60), REPORT_INPUT)
    assert round(depthwise.macs / 1e6, 2) == 23.63


def test_stem_strides_frequency_only():
    model = create_model("bcres2net").eval()
    stem = next(m for m in model.features if isinstance(m, nn.Conv2d))
    assert stem(torch.zeros(1, 1, 256, 32)).shape == (1, 48, 128, 32)
    feats = model.features(torch.zeros(REPORT_INPUT))
    assert feats.shape == (1, 60, 32, 8)  # (2.5C, F/8, T/4)


def test_defaults_are_the_report_student():
    cfg = get_model_config("bcres2net")()
    assert (cfg.width, cfg.scale, cfg.depths, cfg.stem_stride) == (24, 4, (2, 2, 4, 4), (2, 1))


# ------------------------------------------------------------------ shapes, blocks, validation


@pytest.mark.parametrize("n_mels", [32, 64, 128, 256])
def test_every_mel_count_runs_forward_and_backward(n_mels):
    torch.manual_seed(0)
    model = create_model("bcres2net", width=8)
    out = model(torch.randn(2, 1, n_mels, 44))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_block_stride_dilation_and_scale():
    x = torch.randn(2, 8, 16, 10)
    assert BCRes2Block(8, 8, stride=2)(x).shape == (2, 8, 8, 10)
    assert BCRes2Block(8, 8, dilation=2)(x).shape == x.shape
    assert BCRes2Block(8, 12, scale=2)(x).shape == (2, 12, 16, 10)
    assert sum(isinstance(m, SubSpectralNorm) for m in BCRes2Block(8, 12, scale=2).modules()) == 2
    with pytest.raises(ValueError, match="multiple of scale 4, got 10"):
        BCRes2Block(8, 10)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(width=3), "BC-Res2Net width must be an integer >= 4, got 3"),
        (dict(scale=0), "scale must be an integer >= 1"),
        (dict(width=12), "head_groups must be an integer dividing the last stage's 32 channels"),
        (dict(stem_stride=(2,)), "stem_stride must be two integers >= 1"),
        (dict(sub_bands=0), "sub_bands must be an integer >= 1"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(depths=(1, 1)), "must have equal length"),
        (dict(pool_after=(5,)), r"pool_after must name stages 0..3"),
        (dict(norm=True), r"norm must be one of \['resnorm', 'adaresnorm', 'none'\], got True"),
    ],
)
def test_bad_configs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        BCRes2NetConfig(**bad)


def test_norm_choices_change_only_the_residual_normalizations():
    # ResNorm on the input (1 channel) and after each stage (24, 36, 48, 60 channels at C = 24)
    shape = (1, 1, 64, 32)  # the published counts on 256 bins are pinned above
    res = count(create_model("bcres2net", norm="resnorm"), shape)
    none = count(create_model("bcres2net", norm="none"), shape)
    ada = count(create_model("bcres2net", norm="adaresnorm"), shape)
    assert get_model_config("bcres2net")().norm == "resnorm"
    assert (res.params, res.macs) == (none.params, none.macs)
    assert res.params == 74_266 and ada.macs == res.macs
    channels = 1 + 24 + 36 + 48 + 60
    assert ada.params - res.params == 3 * channels
    assert ada.param_bytes - res.param_bytes == 4 * 3 * channels  # deploy_float: float32
    model = create_model("bcres2net", width=8, norm="adaresnorm")
    assert sum(isinstance(m, AdaResNorm) for m in model.modules()) == 5
    assert model(torch.randn(2, 1, 32, 44)).shape == (2, 10)


# ------------------------------------------------------------------ int8 PTQ


def test_ptq_keeps_subspectralnorm_in_float_between_int8_convolutions():
    # it cannot fold into its convolution (nas_asc.train.quantize explains the choice)
    torch.manual_seed(0)
    model = create_model("bcres2net", width=8).eval()
    x = torch.randn(8, 1, 64, 44)
    q = quantize_ptq(model, x)
    assert q(x).shape == (8, 10)
    n_ssn = sum(isinstance(m, SubSpectralNorm) for m in model.modules())
    assert n_ssn == 48 and sum(isinstance(m, SubSpectralNorm) for m in q.modules()) == n_ssn
    assert not any(isinstance(m, torch.ao.nn.quantized.BatchNorm2d) for m in q.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in q.modules())


@pytest.mark.slow
def test_int8_agrees_with_fp32_after_training():
    # the conformance suite checks agreement after 15 Adam steps; this uses the training loop
    torch.manual_seed(0)
    model = create_model("bcres2net", width=16, n_classes=3)
    data = toy_set()
    cfg = TrainConfig(epochs=6, batch_size=16, lr=1e-2, mixstyle_p=0.0, kd_lambda=0.0)
    train(model, data, cfg, seed=0)
    q = quantize_ptq(model, data.x[:64])
    test = toy_set(seed=2)
    with torch.no_grad():
        agree = (model(test.x).argmax(1) == q(test.x).argmax(1)).float().mean().item()
    assert agree >= 0.9


# ------------------------------------------------------------------ search space


def test_space_loads_and_straddles_the_budget():
    space = load_space("bcres2net")
    assert space.model == "bcres2net"
    dim = next(d for d in space.dimensions if d.name == "model.width")
    sizes = {
        w: count(create_model("bcres2net", width=w), (1, 1, 64, 44)).param_bytes
        for w in (int(dim.low), 24, int(dim.high))
    }
    assert sizes[24] == 74_266
    assert sizes[int(dim.low)] < 20_000
    assert sizes[int(dim.high)] > 128_000  # recorded as infeasible, never trained


@pytest.mark.parametrize("which", ["low", "high"])
def test_space_corners_build_and_run(which):
    cfg = load_space("bcres2net").corner(which)
    model = create_model("bcres2net", **cfg["model"])
    assert model(torch.randn(2, 1, cfg["frontend"]["n_mels"], 44)).shape == (2, 10)
