"""BSConv-CNN: blueprint separable convolutions for acoustic scene classification.

Tan and Li, "Low-complexity acoustic scene classification using blueprint separable convolution
and knowledge distillation" (DCASE 2023 Task 1 report, shared/seeds/000), Section 2.2 (the
student) and Section 3.1 (its input: 256 Mel bins and their deltas, 2 x 256 x 44).

The report describes the student in words only (its Figures 3 and 4 are not in the text): a 3x3
blueprint separable convolution with stride 2x2, several BSConvLayers and max-pools, a 3x3 BSConv
before the second max-pool, and a fully connected layer to the 10 classes. A blueprint separable
convolution (BSConv-U, Haase and Amthor 2020) is a pointwise convolution followed by a depthwise
one, the reverse of a depthwise separable convolution; a BSConvLayer is a BSConv, BatchNorm and
ReLU whose output is added to its input. Everything else is chosen here:

* three resolutions: the stem (stride 2), ``depth1`` BSConvLayers, a 2x2 max-pool, ``depth2``
  BSConvLayers, the 3x3 BSConv that widens ``width`` to ``round(widen * width)`` channels, a
  second 2x2 max-pool, then ``depth3`` BSConvLayers at the wide channel count;
* the stem and the widening BSConv are followed by BatchNorm and ReLU like every BSConvLayer (they
  change the channel count, so they have no residual);
* convolutions have no bias (each is followed by BatchNorm, which would absorb it);
* the fully connected layer reads the global average of the last feature map, so the network
  accepts any number of Mel bins and frames;
* the deltas are computed inside the model (:class:`DeltaFeatures`, torchaudio's 5-frame
  regression with replicated edges) from the one-channel log-mel, so that every family takes
  ``(batch, 1, n_mels, frames)``. They add no parameters and no MACs, and stay in float after
  int8 conversion (``deploy_float``), as a front end would.

Known gap: the report's student has 73,386 parameters and 13.18 M MACs on 2 x 256 x 44. Without
its Figure 3 these figures are not reproducible: an enumeration of arrangements of the layers it
names (widths, layers per resolution, biases, pooled or flattened classifier input) found none
with a natural shape that gives both. The defaults (width 32, widen 4, depths 1, 1, 3) are an
arrangement of similar size: 63,338 parameters and 18,264,522 MACs on 1 x 256 x 44 with deltas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from nas_asc.models._registry import register_model

__all__ = ["BSConvConfig", "BSConvNet", "BSConvBlock", "DeltaFeatures"]


@dataclass
class BSConvConfig:
    width: int = 32  # channels of the stem and of the two high-resolution stages
    widen: float = 4.0  # the 3x3 BSConv before the second pool widens to round(widen * width)
    depth1: int = 1  # BSConvLayers after the stem, before the first max-pool
    depth2: int = 1  # BSConvLayers between the two max-pools, before the widening BSConv
    depth3: int = 3  # BSConvLayers after the second max-pool, at the wide channel count
    kernel: int = 3  # depthwise kernel size of every BSConv (3 in the report)
    deltas: int = 1  # delta orders stacked onto the log-mel (1: log-mel + deltas, as reported)
    in_channels: int = 1  # log-mel input planes, before the deltas are stacked
    n_classes: int = 10  # acoustic scenes

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or self.width < 4:
            raise ValueError(f"BSConv width must be an integer >= 4, got {self.width!r}")
        if not isinstance(self.widen, (int, float)) or not 1.0 <= self.widen <= 8.0:
            raise ValueError(f"BSConv widen must be a number in [1, 8], got {self.widen!r}")
        for name in ("depth1", "depth2", "depth3"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 8:
                raise ValueError(f"BSConv {name} must be an integer in [0, 8], got {value!r}")
        if not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"BSConv kernel must be an odd integer >= 1, got {self.kernel!r}")
        if self.deltas not in (0, 1, 2):
            raise ValueError(f"deltas must be 0, 1 or 2 (delta orders), got {self.deltas!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {self.in_channels!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")


class DeltaFeatures(nn.Module):
    """Stack ``order`` delta orders of the input onto it along the channel axis.

    The delta of ``x`` over time is torchaudio's ``compute_deltas`` with a 5-frame window:
    ``(x[t+1] - x[t-1] + 2 * (x[t+2] - x[t-2])) / 10``, edges replicated. ``order=2`` adds the
    delta of the delta. ``(b, c, f, t)`` becomes ``(b, c * (1 + order), f, t)``.

    The deltas belong to the front end: they have no parameters, count no MACs, and stay in float
    after int8 conversion (``deploy_float``).
    """

    deploy_float = True

    def __init__(self, order: int) -> None:
        super().__init__()
        if order not in (0, 1, 2):
            raise ValueError(f"delta order must be 0, 1 or 2, got {order!r}")
        self.order = order

    @staticmethod
    def _delta(x: torch.Tensor) -> torch.Tensor:
        p = F.pad(x, (2, 2, 0, 0), mode="replicate")
        return (p[..., 3:-1] - p[..., 1:-3] + 2.0 * (p[..., 4:] - p[..., :-4])) * 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = [x]
        for _ in range(self.order):
            planes.append(self._delta(planes[-1]))
        return torch.cat(planes, dim=1)


class BSConvBlock(nn.Module):
    """Blueprint separable conv (pointwise, then depthwise), BatchNorm, ReLU, and a residual.

    The residual adds the input to the activated output when ``residual`` is set and the block
    keeps the shape (``cin == cout`` and stride 1); otherwise the block has none.

    Args:
        cin: input channels.
        cout: output channels (of the pointwise and the depthwise convolution).
        kernel: depthwise kernel size (odd; padding keeps the size at stride 1).
        stride: depthwise stride, an int or a (frequency, time) pair.
        residual: add the input to the output where the shapes allow it.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int | tuple[int, int] = 1,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"BSConv kernel must be an odd integer >= 1, got {kernel}")
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.depthwise = nn.Conv2d(
            cout, cout, kernel, stride=stride, padding=kernel // 2, groups=cout, bias=False
        )
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()
        self.use_residual = residual and cin == cout and stride == (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.depthwise(self.pointwise(x))))
        if self.use_residual:
            return x + y
        return y


class BSConvNet(nn.Module):
    """BSConv-CNN student (report 000, Section 2.2); input ``(batch, in_channels, n_mels, t)``."""

    def __init__(self, cfg: BSConvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        narrow = cfg.width
        wide = max(4, round(cfg.widen * cfg.width))
        k = cfg.kernel
        layers: list[nn.Module] = [
            DeltaFeatures(cfg.deltas),
            BSConvBlock(cfg.in_channels * (1 + cfg.deltas), narrow, k, stride=2),
        ]
        layers += [BSConvBlock(narrow, narrow, k) for _ in range(cfg.depth1)]
        layers.append(nn.MaxPool2d(2, 2))
        layers += [BSConvBlock(narrow, narrow, k) for _ in range(cfg.depth2)]
        layers.append(BSConvBlock(narrow, wide, k))
        layers.append(nn.MaxPool2d(2, 2))
        layers += [BSConvBlock(wide, wide, k) for _ in range(cfg.depth3)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(wide, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("bsconv", BSConvConfig, reference_input=(1, 256, 44))
def bsconv(cfg: BSConvConfig) -> BSConvNet:
    """BSConv-CNN; defaults build this reconstruction of report 000's student."""
    return BSConvNet(cfg)
