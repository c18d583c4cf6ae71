"""BC-ResNet: broadcasted residual learning for acoustic scene classification.

Liang et al., "Low-complexity acoustic scene classification based on residual net" (DCASE 2022
Task 1 report, shared/seeds/002): Tables 1 and 5-7 and Fig. 1, built on Kim et al.,
"Broadcasted residual learning for efficient keyword spotting" (Interspeech 2021) and on the
residual normalization of Kim et al. (QTI, DCASE 2021).

The report's per-layer tables fix the block internals, and this module reproduces every
parameter count they give: the c=40 student of Table 5 (85,800 parameters on a 1x256x44 input;
Tables 6 and 7 layer by layer) and the c=80 teacher of Table 1 (314,800, "314.8K"):

* transition block (Table 6): 1x1 conv (no bias), BatchNorm, ReLU, frequency-depthwise (3,1)
  conv, SubSpectralNorm; its output is averaged over frequency and goes through a
  time-depthwise (1,3) conv, BatchNorm, SiLU, 1x1 conv, channel dropout (Dropout2d), is
  broadcast back over frequency, added to the SubSpectralNorm output, and ReLU follows;
* normal block (Table 7): the same without the leading 1x1 conv/BatchNorm/ReLU, plus the
  identity shortcut;
* SubSpectralNorm has 4 sub-bands: Table 6 gives its BatchNorm 320 parameters for 40 channels
  (2 * 40 * 4);
* the 5x5 stem has a bias and no norm (2,080 = 80 * 25 + 80); the classifier is a bias-free 1x1
  conv (1,000 = 100 * 10) followed by a global average;
* the student's stem has stride 2 and max-pools 2x2 follow stages 1-3 (Table 5's shapes); the
  teacher (Table 1) uses stride 1 and no pooling (``stem_stride=1, pool_after=()``).

Choices the report leaves open, taken from the reference BC-ResNet implementation unless noted:

* every convolution in a block is bias-free and padded to keep the map size; the frequency
  stride, when a block has one, sits on the frequency-depthwise conv, and the temporal dilation
  on the time-depthwise conv, as in the reference;
* SubSpectralNorm splits frequency into contiguous bands (the reference's ``view`` layout);
* channel dropout rate 0.1 (the reference keyword-spotting model uses 0.5; DCASE adaptations of
  BC-ResNet use 0.1, which suits the small feature maps here);
* no temporal dilation: with max-pools on time as well as frequency the last stage has two
  frames, where the reference's dilations (1, 2, 4, 8) would see only padding;
* ResNorm ("on input features and input of transition blocks") is the parameter-free
  ``lambda * x + FreqIN(x)`` with lambda 0.1 of Kim et al., applied to the input before the stem
  and before the first block of every stage (``norm="resnorm"``, the default); BC-ResNet1 of
  Table 8 (no ResNorm) is ``norm="none"``. ``norm="adaresnorm"`` puts the adaptive variant of
  the TF-SepNet report (shared/seeds/003, Eq. 4) in the same places instead: it learns the
  residual weight per channel plus an affine, 3 float32 parameters per channel;
* stage channels are ``round(m * c)`` (half up), exact for every even c.

Known gaps: the report's MACs are not reproducible from its tables. This network counts
18,943,160 MACs for the student on 1x256x44 (report: 20.5 M) and 952,573,440 for the teacher
(report: 998.527 M) under the DCASE rule; no placement of the report's layers with the published
parameter counts and shapes gives either figure, so the report presumably used another counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nas_asc.models._registry import register_model
from nas_asc.models.layers import SubSpectralNorm, make_norm

__all__ = ["BCResNetConfig", "BCResNet", "BCResBlock", "NORMS"]

# residual frequency normalizations a BC-ResNet can use (none: BC-ResNet1 of Table 8)
NORMS = ("resnorm", "adaresnorm", "none")


@dataclass
class BCResNetConfig:
    width: int = 40  # c, the width knob (Table 5 student: 40; Table 1 teacher: 80)
    n_classes: int = 10  # acoustic scenes
    in_channels: int = 1  # log-mel input planes
    depths: tuple[int, ...] = (2, 2, 2, 3)  # blocks per stage; the first is a transition block
    multipliers: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)  # stage channels as multiples of c
    stem_multiplier: float = 2.0  # 5x5 stem output channels as a multiple of c
    stem_stride: int = 2  # stride of the 5x5 stem (student 2, teacher 1)
    pool_after: tuple[int, ...] = (0, 1, 2)  # stages followed by a 2x2 max-pool (teacher: none)
    dilations: tuple[int, ...] = (1, 1, 1, 1)  # temporal dilation of each stage's blocks
    sub_bands: int = 4  # SubSpectralNorm frequency sub-bands (1: plain BatchNorm)
    dropout: float = 0.1  # channel dropout (Dropout2d) on the broadcast branch
    norm: str = "resnorm"  # on the input and before each stage: resnorm|adaresnorm|none

    def __post_init__(self) -> None:
        w = self.width
        if isinstance(w, bool) or not isinstance(w, int) or w < 4:
            raise ValueError(f"BC-ResNet width must be an integer >= 4, got {w!r}")
        self.depths = tuple(self.depths)
        self.multipliers = tuple(self.multipliers)
        self.pool_after = tuple(self.pool_after)
        self.dilations = tuple(self.dilations)
        n = len(self.depths)
        if n == 0 or any(not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"BC-ResNet depths must be integers >= 1, got {self.depths}")
        if len(self.multipliers) != n or len(self.dilations) != n:
            raise ValueError(
                f"BC-ResNet depths {self.depths}, multipliers {self.multipliers} and dilations "
                f"{self.dilations} must have equal length"
            )
        if any(m <= 0 for m in (*self.multipliers, self.stem_multiplier)):
            raise ValueError(
                f"BC-ResNet channel multipliers must be > 0, got stem {self.stem_multiplier} "
                f"and stages {self.multipliers}"
            )
        if any(not isinstance(d, int) or d < 1 for d in self.dilations):
            raise ValueError(f"BC-ResNet dilations must be integers >= 1, got {self.dilations}")
        if any(not isinstance(s, int) or not 0 <= s < n for s in self.pool_after):
            raise ValueError(
                f"BC-ResNet pool_after must name stages 0..{n - 1}, got {self.pool_after}"
            )
        if not isinstance(self.stem_stride, int) or self.stem_stride < 1:
            raise ValueError(
                f"BC-ResNet stem_stride must be an integer >= 1, got {self.stem_stride!r}"
            )
        if isinstance(self.sub_bands, bool) or not isinstance(self.sub_bands, int):
            raise ValueError(f"BC-ResNet sub_bands must be an integer >= 1, got {self.sub_bands!r}")
        if self.sub_bands < 1:
            raise ValueError(f"BC-ResNet sub_bands must be an integer >= 1, got {self.sub_bands}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BC-ResNet dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"BC-ResNet norm must be one of {list(NORMS)}, got {self.norm!r}")


def _stage_channels(multiplier: float, width: int) -> int:
    """Channels of a stage: ``multiplier * width`` rounded half up (exact for even widths)."""
    return max(1, math.floor(multiplier * width + 0.5))


class BCResBlock(nn.Module):
    """Broadcasted residual block: a transition block (report Table 6) or a normal one (Table 7).

    It is a transition block when ``cin != cout`` or ``stride != 1`` (1x1 conv, BatchNorm and
    ReLU first; no identity shortcut), else a normal block (identity shortcut).

    Args:
        cin: input channels.
        cout: output channels.
        stride: frequency stride of the frequency-depthwise conv.
        dilation: temporal dilation of the time-depthwise conv.
        sub_bands: SubSpectralNorm sub-bands.
        dropout: channel dropout on the broadcast branch.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        dilation: int = 1,
        sub_bands: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.transition = cin != cout or stride != 1
        if self.transition:
            self.pointwise: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )
        else:
            self.pointwise = nn.Identity()
        # f2: frequency-wise depthwise conv and sub-band normalization (full 2-D map)
        self.freq_dw = nn.Conv2d(
            cout, cout, (3, 1), stride=(stride, 1), padding=(1, 0), groups=cout, bias=False
        )
        self.ssn = SubSpectralNorm(cout, sub_bands)
        # f1: temporal branch on the frequency average, broadcast back over frequency
        self.temporal = nn.Sequential(
            nn.Conv2d(
                cout,
                cout,
                (1, 3),
                padding=(0, dilation),
                dilation=(1, dilation),
                groups=cout,
                bias=False,
            ),
            nn.BatchNorm2d(cout),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 1, bias=False),
            nn.Dropout2d(dropout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aux = self.ssn(self.freq_dw(self.pointwise(x)))
        # the full-size map comes first: the broadcast add then allocates the full output, which
        # the quantized add kernel requires
        out = aux + self.temporal(aux.mean(dim=2, keepdim=True))
        if not self.transition:
            out = x + out
        return self.act(out)


class BCResNet(nn.Module):
    """BC-ResNet (report Tables 1 and 5); input ``(batch, in_channels, n_mels, frames)``."""

    def __init__(self, cfg: BCResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cin = _stage_channels(cfg.stem_multiplier, cfg.width)
        layers: list[nn.Module] = []
        if cfg.norm != "none":
            layers.append(make_norm(cfg.norm, cfg.in_channels))
        layers.append(nn.Conv2d(cfg.in_channels, cin, 5, stride=cfg.stem_stride, padding=2))
        stages = zip(cfg.depths, cfg.multipliers, cfg.dilations, strict=True)
        for stage, (depth, mult, dilation) in enumerate(stages):
            cout = _stage_channels(mult, cfg.width)
            if cfg.norm != "none":
                layers.append(make_norm(cfg.norm, cin))
            for _ in range(depth):
                layers.append(
                    BCResBlock(
                        cin,
                        cout,
                        dilation=dilation,
                        sub_bands=cfg.sub_bands,
                        dropout=cfg.dropout,
                    )
                )
                cin = cout
            if stage in cfg.pool_after:
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(cin, cfg.n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).mean(dim=(2, 3))


@register_model("bcresnet", BCResNetConfig, reference_input=(1, 256, 44))
def bcresnet(cfg: BCResNetConfig) -> BCResNet:
    """BC-ResNet; defaults build the report's c=40 student (Table 5)."""
    return BCResNet(cfg)
