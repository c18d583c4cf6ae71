"""Layers shared by model families: residual frequency normalizations and channel shuffle.

ResNorm is from Kim et al., "QTI submission to DCASE 2021: Residual normalization for
device-imbalanced acoustic scene classification"; AdaResNorm is its adaptive variant from the
TF-SepNet report (shared/seeds/003, Eq. 2-4).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "FreqInstanceNorm",
    "ResNorm",
    "AdaResNorm",
    "shuffle_groups_for",
    "make_norm",
    "SubSpectralNorm",
]


def _freq_stats(
    x: torch.Tensor, eps: float, correction: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std of each (sample, frequency bin) over channels and time.

    ``correction`` 0 is the population variance, 1 the unbiased sample variance (``Tensor.var``'s
    default, which the TF-SepNet authors' AdaResNorm uses).
    """
    var, mean = torch.var_mean(x, dim=(1, 3), keepdim=True, correction=correction)
    return mean, torch.rsqrt(var + eps)


class FreqInstanceNorm(nn.Module):
    """Normalize each (sample, frequency bin) over channels and time (FreqIN, Eq. 2)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, inv_std = _freq_stats(x, self.eps)
        return (x - mean) * inv_std


class ResNorm(nn.Module):
    """``lam * x + FreqIN(x)`` with a fixed ``lam`` (Eq. 3); no parameters.

    Per-sample statistics cannot be folded into int8 weights, so the quantizer keeps this layer in
    float (``deploy_float``); it has no parameters, so it adds no parameter bytes.
    """

    deploy_float = True

    def __init__(self, channels: int, lam: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.lam = lam
        self.freq_in = FreqInstanceNorm(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # lam * x + (x - mean) * inv_std, as one multiply-add over the full feature map
        mean, inv_std = _freq_stats(x, self.freq_in.eps)
        return torch.addcmul(-mean * inv_std, x, self.lam + inv_std)


class AdaResNorm(nn.Module):
    """``(rho * x + (1 - rho) * FreqIN(x)) * gamma + beta``, per-channel rho, gamma, beta (Eq. 4).

    Three parameters per channel. Like ResNorm it runs in float after int8 conversion, so its
    parameters are stored (and counted) as float32.

    FreqIN here divides by the unbiased standard deviation over channels and time
    (``sqrt(var + eps)`` with ``var`` over ``C * T - 1``), as the authors' ``AdaResNorm``
    (``yqcai888/DCASE2023``, ``common.py``) does; the report's Eq. 2 leaves the estimator open.
    """

    deploy_float = True

    def __init__(self, channels: int, rho_init: float = 0.5, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.freq_in = FreqInstanceNorm(eps)
        self.rho = nn.Parameter(torch.full((1, channels, 1, 1), float(rho_init)))
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gamma * (rho * x + (1 - rho) * (x - mean) * inv_std) + beta, rearranged into one
        # multiply-add over the full map with small (batch, channel, freq, 1) coefficients: the
        # feature maps after the stem are the largest in the network, and this is about 2x
        # faster to train than the literal formula.
        mean, inv_std = _freq_stats(x, self.freq_in.eps, correction=1)
        norm_weight = (1.0 - self.rho) * inv_std
        scale = self.gamma * (self.rho + norm_weight)
        shift = self.beta - self.gamma * norm_weight * mean
        return torch.addcmul(shift, x, scale)


_NORMS = {"adaresnorm": AdaResNorm, "resnorm": ResNorm}


def make_norm(kind: str, channels: int) -> nn.Module:
    """Build a residual frequency normalization by name (``adaresnorm`` or ``resnorm``)."""
    if kind not in _NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {sorted(_NORMS)}")
    return _NORMS[kind](channels)


def shuffle_groups_for(channels: int, group_size: int = 10) -> int:
    """``nn.ChannelShuffle`` group count that interleaves ``channels`` in runs of ``group_size``.

    The TF-SepNet authors' ``ShuffleLayer(group=10)`` views the channels as ``(C / 10, 10)`` and
    transposes: output channel ``g * C/10 + a`` is input channel ``a * 10 + g``, which is
    ``nn.ChannelShuffle(C // 10)``. Their layer requires ``C % 10 == 0``; for other counts the
    divisor of ``channels`` nearest to ``group_size`` (the smaller on a tie) takes its place, so
    that every width has a valid shuffle, and the official one wherever it exists.
    """
    if channels < 2:
        raise ValueError(f"channel shuffle needs at least 2 channels, got {channels}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"channel shuffle group size must be an integer >= 1, got {group_size!r}")
    sizes = [d for d in range(1, channels + 1) if channels % d == 0]
    size = min(sizes, key=lambda d: (abs(d - group_size), d))
    return channels // size


# --------------------------------------------------------------------------------------------
# SubSpectralNorm (BC-ResNet family, shared/seeds/002 and 004)
# --------------------------------------------------------------------------------------------


# The two helpers below are leaves for torch.fx (``torch.fx.wrap``): they branch on the
# frequency extent, which symbolic tracing cannot see, so FX records a call instead of tracing
# into them. In the int8 model they run in float between a dequantize and a quantize.
@torch.fx.wrap
def _pad_freq_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate the last frequency bin until the bin count is a multiple of ``multiple``."""
    extra = -x.shape[2] % multiple
    if extra == 0:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, extra), mode="replicate")


@torch.fx.wrap
def _crop_freq_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Drop the frequency bins that ``_pad_freq_to_multiple`` added."""
    if x.shape[2] == like.shape[2]:
        return x
    return x[:, :, : like.shape[2]]


class SubSpectralNorm(nn.Module):
    """BatchNorm with separate statistics and affine parameters per frequency sub-band.

    Chang et al., "Subspectral normalization for neural audio data processing" (ICASSP 2021),
    as used in BC-ResNet (Kim et al., Interspeech 2021). The frequency axis is cut into
    ``sub_bands`` contiguous bands of equal size and each (channel, band) pair gets its own
    BatchNorm statistics: the map is viewed as ``(N, C * S, F / S, T)`` (channel ``c``, band
    ``s`` becomes channel ``c * S + s``), normalized by ``BatchNorm2d(C * S)`` and viewed back.
    That is the reference implementation's layout, so it has ``2 * C * S`` parameters.

    Its statistics are batch statistics, not per-sample ones, so int8 PTQ converts the inner
    BatchNorm2d to a quantized BatchNorm (it cannot be folded into the preceding depthwise conv,
    whose weights are shared across bands); it is not ``deploy_float``.

    When the number of bins is not a multiple of ``sub_bands`` (e.g. 2 bins left of a 32-bin
    input after four halvings, with 4 sub-bands) the last bin is repeated up to the next
    multiple for the statistics and the extra bins are dropped afterwards; inputs whose bin
    count divides evenly take the plain reference path.

    Args:
        channels: feature channels ``C``.
        sub_bands: number of frequency sub-bands ``S`` (1 is a plain BatchNorm2d).
        eps: BatchNorm epsilon.
    """

    def __init__(self, channels: int, sub_bands: int, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(sub_bands, int) or sub_bands < 1:
            raise ValueError(
                f"SubSpectralNorm sub_bands must be an integer >= 1, got {sub_bands!r}"
            )
        self.channels = channels
        self.sub_bands = sub_bands
        self.bn = nn.BatchNorm2d(channels * sub_bands, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _pad_freq_to_multiple(x, self.sub_bands)
        # (N, C, F, T) -> (N, C, S, F/S, T) -> (N, C*S, F/S, T), normalize, and back
        y = self.bn(y.unflatten(2, (self.sub_bands, -1)).flatten(1, 2))
        y = y.unflatten(1, (-1, self.sub_bands)).flatten(2, 3)
        return _crop_freq_like(y, x)
