"""MobileNetV2 with coordinate attention for acoustic scene classification.

Liang et al., "Low-complexity acoustic scene classification based on residual net" (DCASE 2022
Task 1 report, shared/seeds/002), Section 2.1.2 and Tables 2-4: a 3x3 stride-2 stem, three
stages of inverted residual bottlenecks (expansion 2; 32, 48 and 64 channels; the first block of
each stage has stride 2, the others a residual), a 1x1 head, coordinate attention (Hou et al.,
CVPR 2021) with reduction r = 4, and a 1x1 classifier averaged over time and frequency. The input
is 128 Mel bins with deltas and delta-deltas, 3 x 128 x 36.

The tables count parameters the way Keras does: every convolution has a bias, and a BatchNorm
counts its moving mean and variance as well as its scale and shift (4 per channel). Counted that
way, this network reproduces every row of Tables 2-4 and the 110,452 total exactly. PyTorch
holds the moving statistics as buffers, so :func:`nas_asc.complexity.count` reports 105,888
parameters. It counts 11,238,704 MACs on 1 x 128 x 36, 0.47 % above the report's 11.186 M (a
small gap the report's text cannot resolve: it does not say how it counted them). Choices the
report leaves open:

* the three BatchNorms of the head that Table 2 counts at 2 per channel (the second "BN + ReLU",
  the "BN" after coordinate attention and the "BN" on the class scores) have no scale and shift
  (``affine=False``): Keras counts such a layer at exactly its 2 moving statistics per channel,
  which is what makes the table's total add up. All three stay in float after int8 conversion
  (:class:`PlainBatchNorm`): the two that do not follow a convolution cannot be folded, and
  PyTorch's QAT fuser refuses to fold one without scale and shift into the class convolution;
* convolutions pad to keep the size ("same"), so stride 2 halves it rounding up (128 x 36 ->
  64 x 18 -> 32 x 9 -> 16 x 5 -> 8 x 3, Table 2's shapes);
* coordinate attention follows Hou et al.: average over each axis, a shared 1x1 conv to
  ``max(8, C // r)`` channels with BatchNorm and h-swish, then one 1x1 conv and a sigmoid per axis,
  whose two gates multiply the input (Table 2's 3,280 parameters for C = 64, r = 4);
* the deltas are computed inside the model (:class:`~nas_asc.models.bsconv.DeltaFeatures`) so
  that the input is the one-channel log-mel; the report does not give their window;
* the activation of the stem, the bottlenecks and the head is ReLU6 (``activation="relu6"``,
  the default since revision 2), as in the official code of coordinate attention. The report
  published no code, and its tables write "BN + RELU" without saying whether that is Keras'
  ``ReLU()`` or the ``ReLU(6.)`` of Keras' own MobileNetV2; ``activation="relu"`` builds the
  plain ReLU of revision 1. Parameters and MACs are the same either way. In the int8 model a ReLU
  fuses into its convolution, while a ReLU6 runs as a quantized clamp after the convolution (the
  BatchNorm is folded in both cases), on the convolution's output scale.

Checked against Hou et al.'s official code (``houqb/CoordAttention``: ``coordatt.py`` and
``mbv2_ca.py``), on random weights and random BatchNorm statistics in eval mode, outside this
repository: :class:`CoordAttention` equals ``CoordAtt`` of both files (r = 32 and r = 4, 8 x 3 to
32 x 9 maps) to 5e-7 on outputs up to 2.6; :class:`InvertedResidual` with coordinate attention
(``bias=True`` with the bottleneck convolutions' biases set to zero, since the official ones have
none, ``ca_reduction=32``, ``activation="relu6"``) equals the official ``InvertedResidual``
(expansion 6 and 2, stride 1 and 2, odd map sizes) to 1e-6 on outputs up to 5.7, and bias-free
:func:`conv_bn_act` units with ReLU6 equal its stem and head units ``conv_3x3_bn`` and
``conv_1x1_bn`` exactly; with ``activation="relu"`` the
blocks differ by up to 1.9. The official h-swish, ``x * relu6(x + 3) / 6``, is ``nn.Hardswish``;
its gates are plain sigmoids, as here. The whole network has no official counterpart: Hou et
al.'s is the ImageNet MobileNetV2 (seven stages, expansion 6, a 1280-channel head, a linear
classifier, coordinate attention in every bottleneck but none in the head), so there is no
fidelity check for this family. What differs from the official block, and why: the report's
r = 4 (official default 32), biases on every convolution (the report's Keras layers; official
bottleneck convolutions have none), coordinate attention in the bottlenecks only with
``block_attention`` (the report puts it in the head only), and PyTorch's default initialization
(the official code draws convolutions from N(0, 2 / fan-out)).

Search knobs beyond the report: the base width (stages at 1, 1.5 and 2 times it), the expansion,
blocks per stage, and coordinate attention inside every bottleneck (after its depthwise conv, as
in Hou et al.'s MobileNetV2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nas_asc.models._registry import register_model
from nas_asc.models.bsconv import DeltaFeatures

__all__ = [
    "MobileNetV2CAConfig",
    "MobileNetV2CA",
    "InvertedResidual",
    "CoordAttention",
    "PlainBatchNorm",
    "conv_bn_act",
    "ACTIVATIONS",
]

# Stage widths as multiples of the base width (Table 2: 32, 48, 64 for width 32).
STAGE_MULTIPLIERS = (1.0, 1.5, 2.0)

# The activation of the stem, the bottlenecks and the head, by config name. "relu6" is the one of
# Hou et al.'s official MobileNetV2 + coordinate attention (and of MobileNetV2); "relu" is what the
# report's tables write ("BN + RELU").
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu6": nn.ReLU6, "relu": nn.ReLU}


@dataclass
class MobileNetV2CAConfig:
    width: int = 32  # stem and first-stage channels; the later stages have 1.5x and 2x this
    expansion: float = 2.0  # hidden channels of a bottleneck as a multiple of its input channels
    depth: int = 3  # bottlenecks per stage: one with stride 2, then residual ones
    block_attention: bool = False  # coordinate attention inside every bottleneck (not in report)
    ca_reduction: int = 4  # coordinate attention reduction r (hidden = max(8, C // r))
    dropout: float = 0.3  # dropout before the coordinate attention of the head
    deltas: int = 2  # delta orders stacked onto the log-mel (2: deltas and delta-deltas)
    in_channels: int = 1  # log-mel input planes, before the deltas are stacked
    n_classes: int = 10  # acoustic scenes
    activation: str = "relu6"  # of stem, bottlenecks and head: "relu6" (official CA code), "relu"

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or self.width < 4:
            raise ValueError(f"MobileNetV2-CA width must be an integer >= 4, got {self.width!r}")
        if not isinstance(self.expansion, (int, float)) or not 1.0 <= self.expansion <= 8.0:
            raise ValueError(
                f"MobileNetV2-CA expansion must be a number in [1, 8], got {self.expansion!r}"
            )
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 8:
            raise ValueError(
                f"MobileNetV2-CA depth must be an integer in [1, 8], got {self.depth!r}"
            )
        if not isinstance(self.block_attention, bool):
            raise ValueError(f"block_attention must be true or false, got {self.block_attention!r}")
        if not isinstance(self.ca_reduction, int) or self.ca_reduction < 1:
            raise ValueError(f"ca_reduction must be an integer >= 1, got {self.ca_reduction!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.deltas not in (0, 1, 2):
            raise ValueError(f"deltas must be 0, 1 or 2 (delta orders), got {self.deltas!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {self.in_channels!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"MobileNetV2-CA activation must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )


def conv_bn_act(
    cin: int,
    cout: int,
    kernel: int = 1,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    bias: bool = False,
    act: bool = True,
    activation: str = "relu",
) -> nn.Sequential:
    """Convolution ("same" padding), BatchNorm, and optionally an activation (ReLU by default).

    ``activation`` names one of :data:`ACTIVATIONS`. The int8 quantizer folds the BatchNorm into
    the convolution and fuses a ReLU into the same kernel; a ReLU6 follows as a quantized clamp.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class PlainBatchNorm(nn.BatchNorm2d):
    """BatchNorm without scale and shift (``affine=False``), kept in float after int8 conversion.

    PyTorch's quantized BatchNorm kernel needs a scale and a shift, so a standalone one of these
    stays in float (``deploy_float``); it has no parameters, so it adds no parameter bytes. One
    that directly follows a convolution is better a plain ``nn.BatchNorm2d(affine=False)``, which
    the quantizer folds into the convolution.
    """

    deploy_float = True

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False)


class CoordAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021) with reduction ``reduction``.

    The map is averaged over time and over frequency; both profiles go through one shared 1x1 conv
    to ``max(8, channels // reduction)`` channels, BatchNorm and h-swish; a 1x1 conv and a sigmoid
    per axis then give a frequency gate and a time gate that multiply the input.
    """

    def __init__(self, channels: int, reduction: int = 4, bias: bool = True) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.reduce = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=bias), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.gate_f = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=bias), nn.Sigmoid())
        self.gate_t = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=bias), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_freq = x.size(2)
        profile_f = x.mean(dim=3, keepdim=True)  # (b, c, f, 1)
        profile_t = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (b, c, t, 1)
        y = self.reduce(torch.cat((profile_f, profile_t), dim=2))
        gate_f = self.gate_f(y[:, :, :n_freq])
        gate_t = self.gate_t(y[:, :, n_freq:]).transpose(2, 3)  # (b, c, 1, t)
        # full-size input first: the broadcast products then allocate the full map directly
        return x * gate_f * gate_t


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck (report 002, Tables 3 and 4), optionally with coordinate attention.

    1x1 expansion conv, BatchNorm, activation; 3x3 depthwise conv with ``stride``, BatchNorm,
    activation; [coordinate attention]; 1x1 projection conv, BatchNorm; plus the input when the
    block keeps the shape (stride 1 and ``cin == cout``).

    Args:
        cin: input channels.
        cout: output channels.
        stride: depthwise stride, an int or a (frequency, time) pair.
        expansion: hidden channels are ``round(expansion * cin)``.
        coord_attention: insert :class:`CoordAttention` after the depthwise conv.
        ca_reduction: its reduction ``r``.
        bias: biases on the convolutions (the report's Keras layers have them).
        activation: after the first two BatchNorms, a name in :data:`ACTIVATIONS` (default
            ReLU, which the ``blocks`` family builds on; :class:`MobileNetV2CA` passes its own).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int | tuple[int, int] = 1,
        expansion: float = 2.0,
        coord_attention: bool = False,
        ca_reduction: int = 4,
        bias: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        hidden = max(1, round(expansion * cin))
        layers = [
            conv_bn_act(cin, hidden, 1, bias=bias, activation=activation),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, bias=bias, activation=activation),
        ]
        if coord_attention:
            layers.append(CoordAttention(hidden, ca_reduction, bias=bias))
        layers.append(conv_bn_act(hidden, cout, 1, bias=bias, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == (1, 1) and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


def _stage_channels(width: int) -> list[int]:
    return [max(4, round(m * width)) for m in STAGE_MULTIPLIERS]


class MobileNetV2CA(nn.Module):
    """MobileNetV2 + coordinate attention (report 002, Table 2); input ``(b, c, n_mels, t)``."""

    def __init__(self, cfg: MobileNetV2CAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cin = cfg.in_channels * (1 + cfg.deltas)
        self.deltas = DeltaFeatures(cfg.deltas)
        act = cfg.activation
        self.stem = conv_bn_act(cin, cfg.width, 3, stride=2, bias=True, activation=act)
        blocks: list[nn.Module] = []
        cin = cfg.width
        for cout in _stage_channels(cfg.width):
            for i in range(cfg.depth):
                blocks.append(
                    InvertedResidual(
                        cin,
                        cout,
                        stride=2 if i == 0 else 1,
                        expansion=cfg.expansion,
                        coord_attention=cfg.block_attention,
                        ca_reduction=cfg.ca_reduction,
                        activation=act,
                    )
                )
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            conv_bn_act(cin, cin, 1, bias=True, activation=act),
            PlainBatchNorm(cin),
            ACTIVATIONS[act](),
            nn.Conv2d(cin, cin, 1, bias=False),
            nn.Dropout(cfg.dropout),
            CoordAttention(cin, cfg.ca_reduction),
            PlainBatchNorm(cin),
            nn.Conv2d(cin, cfg.n_classes, 1, bias=False),
            # not folded into the convolution: PyTorch's QAT fuser refuses a BatchNorm without
            # scale and shift, so the int8 model keeps it in float (10 channels, no parameters)
            PlainBatchNorm(cfg.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.deltas(x)))
        return self.head(x).mean(dim=(2, 3))


# revision 2: the default activation became ReLU6 (revision 1 used ReLU throughout)
@register_model("mobilenetv2_ca", MobileNetV2CAConfig, revision=2, reference_input=(1, 128, 36))
def mobilenetv2_ca(cfg: MobileNetV2CAConfig) -> MobileNetV2CA:
    """MobileNetV2 + coordinate attention; defaults build report 002's model (Table 2)."""
    return MobileNetV2CA(cfg)
