"""CP-Mobile: the DCASE 2024 Task 1 baseline (a simplified CP-Mobile).

Schmid et al., "Distilling the knowledge of transformers and CNNs with CP-Mobile" (DCASE 2023
Workshop), as simplified in CPJKU's ``dcase2024_task1_baseline`` (``models/baseline.py``), whose
README gives the complexity this file reproduces exactly: 61,148 parameters and 29,419,156 MACs on
its front end (32 kHz, 256 Mel bins, hop 500: a 1 x 256 x 65 input), with every layer's
parameters and MACs as listed there.

The network, with the baseline's settings as defaults:

* an input stem of two 3x3 stride-2 convolutions, ``base_channels // 4`` then ``base_channels``
  channels, each with BatchNorm and ReLU;
* three stages of (3, 2, 1) inverted bottleneck blocks. Stage ``i`` has
  ``make_divisible(base_channels * channels_multiplier ** i, 8)`` channels (32, 56, 104); a block
  expands to ``make_divisible(expansion_rate * in_channels, 8)`` channels with a 1x1 conv, applies
  a 3x3 depthwise conv (with the block's stride), projects with a 1x1 conv, each with BatchNorm and
  all but the projection with ReLU;
* a block whose input and output channels are equal adds a shortcut (the identity, or a 3x3
  average pool with the block's stride when it downsamples), and every block ends with ReLU;
* block 3 has stride (1, 2) (time only) and block 4 stride (2, 1) (frequency only);
* a 1x1 convolution to the classes, BatchNorm, and a global average.

All convolutions are bias-free. The block differs from MobileNetV2's inverted residual
(:class:`~nas_asc.models.mobilenetv2_ca.InvertedResidual`) in its ReLU after the addition, the
pooled shortcut of strided blocks and the rounding of its widths, so it is its own class here; the
convolution-BatchNorm-ReLU unit is shared.

Exact against the official code (``Network`` in ``models/baseline.py`` of
``CPJKU/dcase2024_task1_baseline``), checked by :mod:`nas_asc.fidelity.checks.cpmobile`
(``python -m nas_asc.fidelity cpmobile --official CLONE``): with random weights and random
BatchNorm statistics copied into both, eval-mode logits on 256 x 65 inputs agree to 0.0 (max
absolute difference; logits up to 27) at the baseline and three other configurations. The
initialization is the baseline's ``initialize_weights`` (:func:`init_weights_`): He normal
convolutions with the fan-out (std ``sqrt(2 / (out_channels * kh * kw))``), zero biases,
BatchNorm scale 1 and shift 0, linear layers N(0, 0.01^2); it runs after the whole network is
built, in module order, so under one seed our initial weights equal the baseline's value for
value (compared once against the clone). What differs, none of it in the function: the names
(``in_c``, ``stages.s<i>.b<j>``, ``feed_forward`` there; ``stem``, ``blocks.<j - 1>``,
``classifier`` here), the strides given as ``(block, freq, time)`` triples instead of a
``{"b<block>": (freq, time)}`` dict, and the defaults, which are the baseline's training script's
(``run_training.py``: 1.8 and 2.1), not ``get_model``'s (2.3 and 3.0). The DCASE 2023 CP-Mobile
(``fschmid56/cpjku_dcase23``, ``models/cp_mobile_clean.py``) initializes the same way but adds a
global response normalization after every block and has other strides; it is not this family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nas_asc.models._registry import register_model
from nas_asc.models.mobilenetv2_ca import conv_bn_act

__all__ = ["CPMobileConfig", "CPMobile", "CPMobileBlock", "make_divisible", "init_weights_"]

# The baseline's strides: (block number counted from 1 over all stages, frequency, time).
BASELINE_STRIDES: tuple[tuple[int, int, int], ...] = ((3, 1, 2), (4, 2, 1))


@dataclass
class CPMobileConfig:
    base_channels: int = 32  # stem output channels (rounded to a multiple of 8)
    channels_multiplier: float = 1.8  # stage i has base_channels * channels_multiplier ** i
    expansion_rate: float = 2.1  # hidden channels of a block as a multiple of its input channels
    n_blocks: tuple[int, ...] = (3, 2, 1)  # blocks per stage
    strides: tuple[tuple[int, int, int], ...] = BASELINE_STRIDES  # (block, freq, time); else 1
    in_channels: int = 1  # log-mel input planes
    n_classes: int = 10  # acoustic scenes

    def __post_init__(self) -> None:
        if not isinstance(self.base_channels, int) or self.base_channels < 8:
            raise ValueError(
                f"CP-Mobile base_channels must be an integer >= 8, got {self.base_channels!r}"
            )
        if not isinstance(self.channels_multiplier, (int, float)) or not (
            1.0 <= self.channels_multiplier <= 4.0
        ):
            raise ValueError(
                "CP-Mobile channels_multiplier must be a number in [1, 4], "
                f"got {self.channels_multiplier!r}"
            )
        if not isinstance(self.expansion_rate, (int, float)) or not (
            1.0 <= self.expansion_rate <= 8.0
        ):
            raise ValueError(
                f"CP-Mobile expansion_rate must be a number in [1, 8], got {self.expansion_rate!r}"
            )
        self.n_blocks = tuple(self.n_blocks)
        if not self.n_blocks or any(
            not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.n_blocks
        ):
            raise ValueError(
                f"CP-Mobile n_blocks must be a non-empty list of integers >= 1, got {self.n_blocks}"
            )
        self.strides = tuple(tuple(s) for s in self.strides)
        total = sum(self.n_blocks)
        for entry in self.strides:
            if len(entry) != 3 or not all(isinstance(v, int) and v >= 1 for v in entry):
                raise ValueError(
                    "CP-Mobile strides must be [block, freq_stride, time_stride] triples of "
                    f"integers >= 1, got {entry!r}"
                )
            if entry[0] > total:
                raise ValueError(
                    f"CP-Mobile stride for block {entry[0]}, but n_blocks {self.n_blocks} has only "
                    f"{total} blocks"
                )
        if len({entry[0] for entry in self.strides}) != len(self.strides):
            raise ValueError(f"CP-Mobile strides name a block twice: {self.strides}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {self.in_channels!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10 % below ``value`` (the MobileNet rounding the baseline uses)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class CPMobileBlock(nn.Module):
    """Inverted bottleneck of the DCASE 2024 baseline, with a shortcut when widths match.

    Args:
        cin: input channels.
        cout: output channels.
        expansion_rate: hidden channels are ``make_divisible(expansion_rate * cin, 8)``.
        stride: depthwise stride, an int or a (frequency, time) pair.
    """

    def __init__(
        self, cin: int, cout: int, expansion_rate: float, stride: int | tuple[int, int] = 1
    ) -> None:
        super().__init__()
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        hidden = make_divisible(cin * expansion_rate, 8)
        self.block = nn.Sequential(
            conv_bn_act(cin, hidden, 1),
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            conv_bn_act(hidden, cout, 1, act=False),
        )
        self.use_shortcut = cin == cout
        if stride == (1, 1):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.AvgPool2d(3, stride, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_shortcut:
            return self.act(self.shortcut(x) + self.block(x))
        return self.act(self.block(x))


def init_weights_(module: nn.Module) -> None:
    """The baseline's initialization of one module (``Network.apply`` calls it on every one).

    Convolutions: He normal with the fan-out, N(0, 2 / (out_channels * kh * kw)) (the groups of a
    depthwise conv do not enter the fan-out), biases zero; BatchNorm, GroupNorm and LayerNorm
    (with scale and shift): scale one, shift zero; linear layers: N(0, 0.01^2), biases zero.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def stage_channels(cfg: CPMobileConfig) -> list[int]:
    """Channels of the stem followed by those of every stage."""
    base = make_divisible(cfg.base_channels, 8)
    return [base] + [
        make_divisible(base * cfg.channels_multiplier**i, 8) for i in range(len(cfg.n_blocks))
    ]


class CPMobile(nn.Module):
    """CP-Mobile as in the DCASE 2024 baseline; input ``(batch, in_channels, n_mels, frames)``."""

    def __init__(self, cfg: CPMobileConfig) -> None:
        super().__init__()
        self.cfg = cfg
        channels = stage_channels(cfg)
        self.stem = nn.Sequential(
            conv_bn_act(cfg.in_channels, channels[0] // 4, 3, stride=2),
            conv_bn_act(channels[0] // 4, channels[0], 3, stride=2),
        )
        strides = {block: (f, t) for block, f, t in cfg.strides}
        blocks: list[nn.Module] = []
        cin = channels[0]
        for stage, n in enumerate(cfg.n_blocks):
            cout = channels[stage + 1]
            for _ in range(n):
                stride = strides.get(len(blocks) + 1, (1, 1))
                blocks.append(CPMobileBlock(cin, cout, cfg.expansion_rate, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.classifier = conv_bn_act(cin, cfg.n_classes, 1, act=False)
        # after every layer is built, in module order, as the baseline does: under one seed the
        # initial weights are the baseline's, value for value
        self.apply(init_weights_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(self.stem(x))).mean(dim=(2, 3))


@register_model("cpmobile", CPMobileConfig, reference_input=(1, 256, 65))
def cpmobile(cfg: CPMobileConfig) -> CPMobile:
    """CP-Mobile; defaults build the DCASE 2024 Task 1 baseline."""
    return CPMobile(cfg)
