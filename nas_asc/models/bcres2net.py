"""BC-Res2Net: broadcasted residual learning with Res2Net multi-scale branches.

Weng, Yang and Xu, "Low-complexity acoustic scene classification using deep mutual learning and
knowledge distillation fine-tuning" (DCASE 2023 Task 1 report, shared/seeds/004), Table 1 and
Section 3.2: BC-ResNet (Kim et al., Interspeech 2021) whose residual functions are replaced by
Res2Net (Gao et al., TPAMI 2021) hierarchical splits of scale 4, with ResNorm on the input and
after every stage; the student has C = 24.

**Exact against the authors' code** (GitHub ``wsdragon2010/GZHU_DCASE2023_TASK1``,
``pytorch/all_models_softmax.py``): the submitted student is ``BcRes2NetModel_resnorm_bn_quant``
with ``model_width=3`` (C = 8 * model_width = 24), ``mel_bins=256`` and 10 classes, on 1 s at
32 kHz with a 2048-point window and hop 1024: a ``1 x 256 x 32`` log-mel input (the
repository's ``dcase_train.sh``, ``dml_train.sh`` and ``kd_fineturn.sh``). With its weights and
BatchNorm statistics drawn at random and copied in by a name mapping, the eval-mode logits of
this network and of the official one (front end replaced by the identity; its output is logits,
no softmax) agree bit for bit (max difference 0) at C = 24, at C = 16 and at C = 80 (the
report's BC-Res2Net_wide) with 3 classes; once also in training mode (batch statistics and the
updated running statistics, dropout off; not part of the command). Check it against a clone::

    git clone https://github.com/wsdragon2010/GZHU_DCASE2023_TASK1 /tmp/GZHU
    python -m nas_asc.fidelity bcres2net --official /tmp/GZHU

The official network, in forward order (defaults here; ``F x T`` = bins x frames):

* a BatchNorm over the Mel bins (``bn0``: each bin one channel, statistics over batch and time;
  512 parameters at 256 bins), then the authors' ResNorm ``x + BatchNorm(x)`` over the bins
  (``bn1``, 512): this module's :class:`FreqBatchNorm` (``norm="resnorm_bn"``, the default);
* a biased 5x5 conv to 2C with stride (2, 1), i.e. on frequency only (Table 1's ``T/2, T/4,
  T/8`` cannot be right: the unpadded 5x5 head would not fit the frames left of 32);
* four stages of 2, 2, 4 and 4 blocks ("BC-Res2Block x n" in Table 1 counts the normal blocks
  after each stage's transition block) with C, 1.5C, 2C and 2.5C channels, each stage followed
  by ResNorm ``x + BatchNorm(x)`` over its bins (128, 64, 32, 32: 256 + 128 + 64 + 64
  parameters), stages 1 and 2 then by a 2x2 max-pool: frequency ``F/2 -> F/4 -> F/8``, time
  ``T -> T/2 -> T/4``;
* in a block the channels are split into ``scale`` = 4 groups of ``w = C / scale``; group ``i``
  is added to the previous group's output and goes through its own biased (3, 1) conv
  (``w -> w``, not depthwise) and a SubSpectralNorm with 4 sub-bands; the concatenated result
  is averaged over frequency and passes a second hierarchical split with biased (1, 3) convs
  each followed by ReLU; the result is broadcast over frequency and added, then ReLU;
* a transition block (channel change) starts with a biased 1x1 conv, BatchNorm and ReLU, ends
  its temporal branch with a biased 1x1 conv and channel dropout (0.1), and has no identity
  shortcut; a normal block has neither, and adds the identity;
* the head: a 5x5 conv without padding in 20 groups (Table 1 says "Group=2.5C"; the code fixes
  20), a biased 1x1 conv to 4C (no activation), the mean over frequency and time, and a biased
  1x1 conv to the classes.

Parameters and MACs at C = 24 on ``1 x 256 x 32``: 75,802 and 23,971,450 (Table 3: 23.97 M).
Table 3's 76,906 parameters also count the official blocks' ``t_ssn``, four BatchNorms per
block that are built but never called (1,104 at C = 24); this network leaves them out:
75,802 + 1,104 = 76,906. (Revision 1 of this family lacked the input BatchNorm and had the
parameter-free ResNorm of Kim et al. in ResNorm's places: 74,266 parameters, 23,969,914 MACs.)

Different, by design:

* the input is the log-mel map; the official model computes it itself (torchlibrosa), and
  adds its training augmentations (SpecAugment, mixup, Freq-MixStyle) in its forward;
* the output is ``(batch, classes)`` logits; the official ``squeeze()`` drops the batch axis
  of a single clip;
* the per-bin BatchNorms need the input's Mel bins (``n_mels``, default 256; the official code
  fixes 256 bins). An input with fewer bins is accepted and uses the lowest bins' statistics
  (zero-padded to ``n_mels`` for these layers and cropped back), so that every front end runs;
  one with more is refused. Set ``n_mels`` to the front end's bins for a network of that size;
* search options beyond the official code: ``norm="resnorm"`` is the ResNorm the report cites
  (Kim et al., DCASE 2021: the parameter-free ``lambda * x + FreqIN(x)``, lambda 0.1), the
  report's variant, without the input BatchNorm; ``norm="adaresnorm"`` puts AdaResNorm
  (shared/seeds/003, Eq. 4; 3 float32 parameters per channel) in the same places;
  ``norm="none"`` leaves the normalizations out (the three need no ``n_mels``); ``width``,
  ``scale``, ``depths``, ``multipliers``, ``sub_bands``, ``dropout`` and the head's knobs are
  nas-asc's (the defaults are the official values). Stage channels are rounded up to a multiple
  of ``scale`` (exact for every width divisible by 8, which the 20 head groups require anyway);
  a block's frequency stride, which the official network never uses, subsamples in the
  transition's 1x1 conv. Maps smaller than the head's 5x5 kernel (inputs with fewer than 40
  bins or 20 frames) are zero-padded to it (a no-op for the official input);
* int8: nas-asc's FX PTQ or QAT (:mod:`nas_asc.train.quantize`); the per-bin BatchNorms become
  quantized BatchNorms, as in the authors' eager-mode PTQ submission.

Revision 2 (this one) added the input BatchNorm and made the official ResNorm the default;
checkpoints of revision 1 are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nas_asc.models._registry import register_model
from nas_asc.models.layers import SubSpectralNorm, make_norm

__all__ = ["BCRes2NetConfig", "BCRes2Net", "BCRes2Block", "FreqBatchNorm", "NORMS"]

# residual frequency normalizations a BC-Res2Net can use ("resnorm_bn": the authors' code)
NORMS = ("resnorm_bn", "resnorm", "adaresnorm", "none")


@dataclass
class BCRes2NetConfig:
    width: int = 24  # C, the width knob (the report's student: 24)
    scale: int = 4  # Res2Net scale: channel groups of each hierarchical split
    n_classes: int = 10  # acoustic scenes
    in_channels: int = 1  # log-mel input planes
    depths: tuple[int, ...] = (2, 2, 4, 4)  # blocks per stage; the first is a transition block
    multipliers: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)  # stage channels as multiples of C
    stem_multiplier: float = 2.0  # 5x5 stem output channels as a multiple of C
    stem_stride: tuple[int, int] = (2, 1)  # (frequency, time) stride of the 5x5 stem
    pool_after: tuple[int, ...] = (0, 1)  # stages followed by a 2x2 max-pool
    head_multiplier: float = 4.0  # channels of the head's 1x1 conv as a multiple of C
    head_kernel: int = 5  # kernel of the head's unpadded grouped conv
    head_groups: int = 20  # groups of that conv (the authors' code; must divide its channels)
    sub_bands: int = 4  # SubSpectralNorm frequency sub-bands (1: plain BatchNorm)
    dropout: float = 0.1  # channel dropout at the end of each transition block
    norm: str = "resnorm_bn"  # on the input and after every stage: a name in NORMS
    n_mels: int = 256  # Mel bins of the input: sizes the per-bin BatchNorms of "resnorm_bn"

    def __post_init__(self) -> None:
        w = self.width
        if isinstance(w, bool) or not isinstance(w, int) or w < 4:
            raise ValueError(f"BC-Res2Net width must be an integer >= 4, got {w!r}")
        s = self.scale
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"BC-Res2Net scale must be an integer >= 1, got {s!r}")
        self.depths = tuple(self.depths)
        self.multipliers = tuple(self.multipliers)
        self.pool_after = tuple(self.pool_after)
        self.stem_stride = tuple(self.stem_stride)
        n = len(self.depths)
        if n == 0 or any(not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"BC-Res2Net depths must be integers >= 1, got {self.depths}")
        if len(self.multipliers) != n:
            raise ValueError(
                f"BC-Res2Net depths {self.depths} and multipliers {self.multipliers} must have "
                "equal length"
            )
        if any(m <= 0 for m in (*self.multipliers, self.stem_multiplier, self.head_multiplier)):
            raise ValueError(
                "BC-Res2Net channel multipliers must be > 0, got stem "
                f"{self.stem_multiplier}, stages {self.multipliers}, head {self.head_multiplier}"
            )
        if any(not isinstance(p, int) or not 0 <= p < n for p in self.pool_after):
            raise ValueError(
                f"BC-Res2Net pool_after must name stages 0..{n - 1}, got {self.pool_after}"
            )
        if len(self.stem_stride) != 2 or any(
            not isinstance(v, int) or v < 1 for v in self.stem_stride
        ):
            raise ValueError(
                "BC-Res2Net stem_stride must be two integers >= 1 (frequency, time), "
                f"got {self.stem_stride}"
            )
        if not isinstance(self.head_kernel, int) or self.head_kernel < 1:
            raise ValueError(
                f"BC-Res2Net head_kernel must be an integer >= 1, got {self.head_kernel!r}"
            )
        if isinstance(self.sub_bands, bool) or not isinstance(self.sub_bands, int):
            raise ValueError(
                f"BC-Res2Net sub_bands must be an integer >= 1, got {self.sub_bands!r}"
            )
        if self.sub_bands < 1:
            raise ValueError(f"BC-Res2Net sub_bands must be an integer >= 1, got {self.sub_bands}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BC-Res2Net dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"BC-Res2Net norm must be one of {list(NORMS)}, got {self.norm!r}")
        m = self.n_mels
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"BC-Res2Net n_mels must be an integer >= 1, got {m!r}")
        last = _stage_channels(self.multipliers[-1], w, s)
        g = self.head_groups
        if isinstance(g, bool) or not isinstance(g, int) or g < 1 or last % g:
            raise ValueError(
                f"BC-Res2Net head_groups must be an integer dividing the last stage's {last} "
                f"channels, got {g!r}; use a width divisible by 8 (with the default 20 groups) "
                "or set head_groups to a divisor"
            )


def _stage_channels(multiplier: float, width: int, scale: int) -> int:
    """Channels of a stage: ``multiplier * width`` rounded up to a multiple of ``scale``."""
    return scale * max(1, math.ceil(round(multiplier * width / scale, 6)))


# A leaf for torch.fx (it branches on the map size, which symbolic tracing cannot see); in the
# int8 model it runs in float between a dequantize and a quantize.
@torch.fx.wrap
def _pad_to_kernel(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Zero-pad frequency and time (both sides) up to ``kernel`` where the map is smaller."""
    pad_f = max(0, kernel - x.shape[2])
    pad_t = max(0, kernel - x.shape[3])
    if pad_f == 0 and pad_t == 0:
        return x
    return nn.functional.pad(x, (pad_t // 2, pad_t - pad_t // 2, pad_f // 2, pad_f - pad_f // 2))


# A leaf for torch.fx (it branches on the input size); it runs before the first quantize.
@torch.fx.wrap
def _check_bins(x: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Refuse inputs with more Mel bins than the per-bin BatchNorms were built for."""
    if x.shape[2] > n_mels:
        raise ValueError(
            f"BC-Res2Net's per-bin BatchNorms are built for n_mels={n_mels} Mel bins, got an "
            f"input with {x.shape[2]}; set n_mels to the front end's bins"
        )
    return x


class FreqBatchNorm(nn.Module):
    """BatchNorm over frequency: every bin is a channel, with statistics over batch, channels
    and time (a map ``(N, C, F, T)`` normalized as ``(N, F, C, T)``); ``2 * bins`` parameters.

    ``residual=False`` is the authors' input BatchNorm over the Mel bins, ``residual=True`` their
    ResNorm ``x + BN(x)``. An input with fewer than ``bins`` bins is zero-padded to ``bins`` for
    the normalization and cropped back, i.e. uses the statistics of the lowest bins (exact when
    it has ``bins``; the model refuses inputs with more).
    """

    def __init__(self, bins: int, residual: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.bins = bins
        self.residual = residual
        self.bn = nn.BatchNorm2d(bins, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # padding and cropping are no-ops at ``bins`` bins, and in the int8 model lossless:
        # they run in float between a dequantize and a quantize whose observer sees the same
        # values (the zeros are in every uint8 range)
        f = x.size(2)
        y = nn.functional.pad(x, (0, 0, 0, self.bins - f))
        y = self.bn(y.transpose(1, 2)).transpose(1, 2)[:, :, :f]
        return x + y if self.residual else y


class BCRes2Block(nn.Module):
    """BC-Res2Net block: a transition block when ``cin != cout`` or ``stride != 1``, else normal.

    Args:
        cin: input channels.
        cout: output channels, a multiple of ``scale``.
        stride: frequency stride, applied by the transition block's 1x1 conv.
        dilation: temporal dilation of the (1, 3) convs.
        scale: Res2Net scale (number of channel groups).
        sub_bands: SubSpectralNorm sub-bands.
        dropout: channel dropout at the end of a transition block (unused by a normal block).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        dilation: int = 1,
        scale: int = 4,
        sub_bands: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if cout % scale:
            raise ValueError(
                f"BC-Res2Block output channels must be a multiple of scale {scale}, got {cout}"
            )
        self.scale = scale
        self.group = cout // scale
        g = self.group
        self.transition = cin != cout or stride != 1
        if self.transition:
            self.pointwise: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=(stride, 1)),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )
        else:
            self.pointwise = nn.Identity()
        self.freq_convs = nn.ModuleList(
            nn.Conv2d(g, g, (3, 1), padding=(1, 0)) for _ in range(scale)
        )
        self.freq_norms = nn.ModuleList(SubSpectralNorm(g, sub_bands) for _ in range(scale))
        self.time_convs = nn.ModuleList(
            nn.Conv2d(g, g, (1, 3), padding=(0, dilation), dilation=(1, dilation))
            for _ in range(scale)
        )
        self.time_act = nn.ReLU()
        if self.transition:
            self.project: nn.Module = nn.Sequential(nn.Conv2d(cout, cout, 1), nn.Dropout2d(dropout))
        else:
            self.project = nn.Identity()
        self.act = nn.ReLU()

    def _hierarchical(self, x: torch.Tensor, op) -> torch.Tensor:
        """Res2Net hierarchy: group i gets its input plus group i-1's output, through op(i)."""
        parts = torch.split(x, self.group, dim=1)
        outs = []
        y = parts[0]
        for i in range(self.scale):
            if i > 0:
                y = y + parts[i]
            y = op(i, y)
            outs.append(y)
        return torch.cat(outs, dim=1)

    def _freq_split(self, x: torch.Tensor) -> torch.Tensor:
        return self._hierarchical(x, lambda i, y: self.freq_norms[i](self.freq_convs[i](y)))

    def _time_split(self, x: torch.Tensor) -> torch.Tensor:
        return self._hierarchical(x, lambda i, y: self.time_act(self.time_convs[i](y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        aux = self._freq_split(self.pointwise(x))
        # full-size maps first in the broadcast adds (the quantized add needs the full output)
        out = aux + self.project(self._time_split(aux.mean(dim=2, keepdim=True)))
        if not self.transition:
            out = x + out
        return self.act(out)


class BCRes2Net(nn.Module):
    """BC-Res2Net (report Table 1, the authors' code); input ``(batch, in_channels, n_mels, t)``."""

    def __init__(self, cfg: BCRes2NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cin = _stage_channels(cfg.stem_multiplier, cfg.width, 1)
        bins = cfg.n_mels  # frequency bins at each point, for the per-bin BatchNorms

        def norm(channels: int) -> nn.Module:
            if cfg.norm == "resnorm_bn":
                return FreqBatchNorm(bins, residual=True)
            return make_norm(cfg.norm, channels)

        layers: list[nn.Module] = []
        if cfg.norm == "resnorm_bn":
            layers.append(FreqBatchNorm(bins, residual=False))  # the input BatchNorm
        if cfg.norm != "none":
            layers.append(norm(cfg.in_channels))
        layers.append(nn.Conv2d(cfg.in_channels, cin, 5, stride=cfg.stem_stride, padding=2))
        bins = (bins - 1) // cfg.stem_stride[0] + 1
        for stage, (depth, mult) in enumerate(zip(cfg.depths, cfg.multipliers, strict=True)):
            cout = _stage_channels(mult, cfg.width, cfg.scale)
            for _ in range(depth):
                layers.append(
                    BCRes2Block(
                        cin, cout, scale=cfg.scale, sub_bands=cfg.sub_bands, dropout=cfg.dropout
                    )
                )
                cin = cout
            if cfg.norm != "none":
                layers.append(norm(cout))
            if stage in cfg.pool_after:
                layers.append(nn.MaxPool2d(2, 2))
                bins = max(1, bins // 2)
        self.features = nn.Sequential(*layers)
        self.head_kernel = cfg.head_kernel
        hidden = _stage_channels(cfg.head_multiplier, cfg.width, 1)
        self.head_conv = nn.Conv2d(cin, cin, cfg.head_kernel, groups=cfg.head_groups)
        self.head_pointwise = nn.Conv2d(cin, hidden, 1)
        self.classifier = nn.Conv2d(hidden, cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.norm == "resnorm_bn":
            x = _check_bins(x, self.cfg.n_mels)
        x = _pad_to_kernel(self.features(x), self.head_kernel)
        x = self.head_pointwise(self.head_conv(x)).mean(dim=(2, 3), keepdim=True)
        return self.classifier(x).flatten(1)


@register_model("bcres2net", BCRes2NetConfig, revision=2, reference_input=(1, 256, 32))
def bcres2net(cfg: BCRes2NetConfig) -> BCRes2Net:
    """BC-Res2Net; defaults build the authors' submitted C=24 student (256 Mel bins)."""
    return BCRes2Net(cfg)
