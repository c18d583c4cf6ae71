"""Feature-level augmentation.

Freq-MixStyle (Schmid et al., CP-JKU DCASE 2022 report; used by the TF-SepNet report,
shared/seeds/003, Sec. 2.4): MixStyle with statistics taken per frequency bin over channels and
time, so that the spectral "style" (device coloration) of one clip is mixed with another's.
"""

from __future__ import annotations

import torch

__all__ = ["freq_mixstyle"]


def freq_mixstyle(
    x: torch.Tensor,
    alpha: float,
    p: float,
    generator: torch.Generator | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Apply Freq-MixStyle to a batch ``(batch, channels, freq, time)`` with probability ``p``.

    Each clip is normalized per frequency bin and re-styled with a convex mix (weight drawn from
    ``Beta(alpha, alpha)``) of its own statistics and those of a random other clip in the batch.

    Args:
        x: the batch.
        alpha: Beta distribution parameter, > 0.
        p: probability of applying it to this batch, in [0, 1].
        generator: random generator, for reproducibility.
        eps: variance floor.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"MixStyle p must be in [0, 1], got {p}")
    if alpha <= 0:
        raise ValueError(f"MixStyle alpha must be > 0, got {alpha}")
    if p == 0.0 or torch.rand((), generator=generator).item() >= p:
        return x
    batch = x.shape[0]
    var, mu = torch.var_mean(x, dim=(1, 3), keepdim=True)
    sig = torch.sqrt(var + eps)
    mu, sig = mu.detach(), sig.detach()
    # Beta(alpha, alpha) as G1 / (G1 + G2) with Gamma(alpha) draws, which (unlike
    # torch.distributions.Beta) can take an explicit generator
    shape = torch.full((2, batch, 1, 1, 1), float(alpha))
    gammas = torch._standard_gamma(shape, generator=generator)
    lam = gammas[0] / (gammas[0] + gammas[1]).clamp_min(1e-12)
    perm = torch.randperm(batch, generator=generator)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix
