"""A generic backbone whose block type, width and depth per stage are search dimensions.

This is the "block types" dimension of nas-asc: one backbone (stem, three stages with pooling,
1x1 classifier and global average), where each stage is built from any of the blocks of the seed
systems, each taken from its family file so that the backbone and the families share one
implementation:

============  =====================================================================  ==========
block         source                                                                 report
============  =====================================================================  ==========
``tfsep``     :class:`~nas_asc.models.tfsepnet.TFSepConv` (time-frequency separable)  003
``bcres``     :class:`~nas_asc.models.bcresnet.BCResBlock` (broadcasted residual)     002
``bsconv``    :class:`~nas_asc.models.bsconv.BSConvBlock` (blueprint separable)       000
``ir``        :class:`~nas_asc.models.mobilenetv2_ca.InvertedResidual`                002
``ir_ca``     the same with coordinate attention                                      002
``res2``      :class:`~nas_asc.models.bcres2net.BCRes2Block` (Res2Net scale 4)        004
============  =====================================================================  ==========

The first block of a stage maps the previous width to the stage's width (each block type's own
transition: 1x1 conv, expansion or pointwise projection); the others keep it. The stem is a 5x5
stride-2 convolution with BatchNorm and ReLU, as in TF-SepNet's stem but with BatchNorm so that
every stage sees the same kind of input whatever its block; 2x2 max-pools follow stages 1 and 2.
Widths must be multiples of 4 (TF-SepConv splits its channels in two halves and Res2 blocks into
four groups).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nas_asc._registry import Registry
from nas_asc.models._registry import register_model
from nas_asc.models.bcres2net import BCRes2Block
from nas_asc.models.bcresnet import BCResBlock
from nas_asc.models.bsconv import BSConvBlock
from nas_asc.models.mobilenetv2_ca import InvertedResidual
from nas_asc.models.tfsepnet import TFSepConv

__all__ = ["BLOCKS", "BlocksConfig", "BlocksNet", "make_block"]

N_STAGES = 3


# block name -> builder(cin, cout, cfg)
BLOCKS: Registry[Callable[[int, int, BlocksConfig], nn.Module]] = Registry("block")


@BLOCKS.register("tfsep")
def _tfsep(cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    return TFSepConv(cin, cout, kernel=3, shuffle=True, dropout=cfg.dropout)


@BLOCKS.register("bcres")
def _bcres(cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    return BCResBlock(cin, cout, sub_bands=4, dropout=cfg.dropout)


@BLOCKS.register("bsconv")
def _bsconv(cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    return BSConvBlock(cin, cout, kernel=3, residual=True)


@BLOCKS.register("ir")
def _ir(cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    return InvertedResidual(cin, cout, expansion=cfg.expansion, coord_attention=False)


@BLOCKS.register("ir_ca")
def _ir_ca(cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    return InvertedResidual(cin, cout, expansion=cfg.expansion, coord_attention=True)


@BLOCKS.register("res2")
def _res2(cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    return BCRes2Block(cin, cout, scale=4, sub_bands=4, dropout=cfg.dropout)


@dataclass
class BlocksConfig:
    stem_width: int = 24  # channels of the 5x5 stride-2 stem
    stage1_block: str = "bsconv"  # block type of stage 1, a name in BLOCKS
    stage1_width: int = 32  # channels of stage 1 (multiple of 4)
    stage1_depth: int = 2  # blocks in stage 1
    stage2_block: str = "tfsep"  # block type of stage 2
    stage2_width: int = 48  # channels of stage 2
    stage2_depth: int = 2  # blocks in stage 2
    stage3_block: str = "bcres"  # block type of stage 3
    stage3_width: int = 64  # channels of stage 3
    stage3_depth: int = 2  # blocks in stage 3
    expansion: float = 2.0  # hidden-channel expansion of inverted-residual blocks
    dropout: float = 0.1  # dropout inside the blocks that have one (tfsep, bcres, res2)
    n_classes: int = 10  # acoustic scenes
    in_channels: int = 1  # log-mel input planes

    def __post_init__(self) -> None:
        if not isinstance(self.stem_width, int) or self.stem_width < 4:
            raise ValueError(f"blocks stem_width must be an integer >= 4, got {self.stem_width!r}")
        for i in range(1, N_STAGES + 1):
            block = getattr(self, f"stage{i}_block")
            width = getattr(self, f"stage{i}_width")
            depth = getattr(self, f"stage{i}_depth")
            if block not in BLOCKS:
                raise ValueError(
                    f"unknown block {block!r} for stage {i}; choose one of {', '.join(BLOCKS)}"
                )
            if isinstance(width, bool) or not isinstance(width, int) or width < 4 or width % 4:
                raise ValueError(f"stage{i}_width must be a positive multiple of 4, got {width!r}")
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
                raise ValueError(f"stage{i}_depth must be an integer >= 1, got {depth!r}")
        if not self.expansion > 0:
            raise ValueError(f"expansion must be > 0, got {self.expansion}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def stages(self) -> list[tuple[str, int, int]]:
        """``(block, width, depth)`` of each stage."""
        return [
            (
                getattr(self, f"stage{i}_block"),
                getattr(self, f"stage{i}_width"),
                getattr(self, f"stage{i}_depth"),
            )
            for i in range(1, N_STAGES + 1)
        ]


def make_block(name: str, cin: int, cout: int, cfg: BlocksConfig) -> nn.Module:
    """Build block ``name`` mapping ``cin`` to ``cout`` channels."""
    return BLOCKS.get(name)(cin, cout, cfg)


class BlocksNet(nn.Module):
    """Stem, three stages of searchable blocks (pools after the first two), 1x1 classifier."""

    def __init__(self, cfg: BlocksConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels, cfg.stem_width, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(cfg.stem_width),
            nn.ReLU(inplace=True),
        ]
        cin = cfg.stem_width
        for stage, (block, width, depth) in enumerate(cfg.stages()):
            for _ in range(depth):
                layers.append(make_block(block, cin, width, cfg))
                cin = width
            if stage < N_STAGES - 1:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, cfg.n_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).mean(dim=(2, 3))


@register_model("blocks", BlocksConfig, reference_input=(1, 64, 44))
def blocks(cfg: BlocksConfig) -> BlocksNet:
    """The generic block-type backbone; defaults mix BSConv, TF-SepConv and BC-Res stages."""
    return BlocksNet(cfg)
