"""Feature-level augmentation: Freq-MixStyle, SpecAugment, mixup and device-simulation swaps.

* Freq-MixStyle (Schmid et al., CP-JKU DCASE 2022 report; used by the TF-SepNet report,
  shared/seeds/003, Sec. 2.4): MixStyle with statistics taken per frequency bin over channels and
  time, so that the spectral "style" (device coloration) of one clip is mixed with another's.
* SpecAugment (Park et al., Interspeech 2019; used by the BSConv report, shared/seeds/000): one
  frequency mask and one time mask of random width per clip.
* mixup (Zhang et al., ICLR 2018; in the ablation of shared/seeds/004, Table 2): convex mixing of
  two clips with a Beta(alpha, alpha) weight; the loss mixes both clips' targets with it.
* Device simulation swaps (shared/seeds/004 Sec. 2.1, shared/seeds/003 Sec. 2.3): a device-A clip
  is replaced by one of its pre-computed copies convolved with a microphone impulse response.

Every function works on a whole batch at once (no Python loop over clips) and draws its random
numbers from an explicit ``torch.Generator``, so a training run is reproducible from its seed.
The draws are made on the generator's device (the CPU in the training loop) and moved to the
batch's, so a batch on a GPU gets exactly the draws it would get on the CPU. A
function whose probability is 0 draws nothing, so turning an augmentation off leaves the random
stream, and therefore every other augmentation and the batch order, exactly as before.
"""

from __future__ import annotations

import torch

__all__ = ["freq_mixstyle", "spec_augment", "mixup", "device_swap"]


def _beta(alpha: float, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    # Beta(alpha, alpha) as G1 / (G1 + G2) with Gamma(alpha) draws, which (unlike
    # torch.distributions.Beta) can take an explicit generator
    gammas = torch._standard_gamma(torch.full((2, *shape), float(alpha)), generator=generator)
    return gammas[0] / (gammas[0] + gammas[1]).clamp_min(1e-12)


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} p must be in [0, 1], got {p}")


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
    _check_probability("MixStyle", p)
    if alpha <= 0:
        raise ValueError(f"MixStyle alpha must be > 0, got {alpha}")
    if p == 0.0 or torch.rand((), generator=generator).item() >= p:
        return x
    batch = x.shape[0]
    var, mu = torch.var_mean(x, dim=(1, 3), keepdim=True)
    sig = torch.sqrt(var + eps)
    mu, sig = mu.detach(), sig.detach()
    lam = _beta(alpha, (batch, 1, 1, 1), generator).to(x.device)
    perm = torch.randperm(batch, generator=generator).to(x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


def _band(
    batch: int, size: int, max_width: int, apply: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``(batch, size)`` bool: one contiguous band per row, width uniform in [0, max_width]."""
    max_width = min(max_width, size)
    width = torch.randint(0, max_width + 1, (batch,), generator=generator) * apply
    # start uniform over the size - width + 1 positions where the band fits
    start = (torch.rand(batch, generator=generator) * (size - width + 1)).long()
    pos = torch.arange(size)
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])


def spec_augment(
    x: torch.Tensor,
    freq_mask: int,
    time_mask: int,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment: mask one frequency band and one time span of each clip with probability ``p``.

    Widths are drawn uniformly from ``[0, freq_mask]`` Mel bins and ``[0, time_mask]`` frames
    (capped at the input's size), positions uniformly where the band fits, independently per clip.
    Masked cells are set to 0, which is the mean of the normalized features, as the SpecAugment
    paper masks with the mean.

    Args:
        x: the batch ``(batch, channels, freq, time)``; the masks cover every channel.
        freq_mask: largest frequency-mask width in bins, >= 0.
        time_mask: largest time-mask width in frames, >= 0.
        p: probability that a clip is masked, in [0, 1].
        generator: random generator, for reproducibility.

    Returns:
        The masked batch (a new tensor), or ``x`` itself when ``p`` is 0.
    """
    _check_probability("SpecAugment", p)
    for name, width in (("freq_mask", freq_mask), ("time_mask", time_mask)):
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ValueError(f"SpecAugment {name} must be an integer >= 0, got {width!r}")
    if p == 0.0:
        return x
    batch, _, n_freq, n_time = x.shape
    apply = torch.rand(batch, generator=generator) < p
    freq = _band(batch, n_freq, freq_mask, apply, generator)
    time = _band(batch, n_time, time_mask, apply, generator)
    mask = freq[:, None, :, None] | time[:, None, None, :]
    return x.masked_fill(mask.to(x.device), 0.0)


def mixup(
    x: torch.Tensor, alpha: float, p: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """mixup: with probability ``p``, mix the batch with a permutation of itself.

    ``x' = lam * x + (1 - lam) * x[perm]`` with one ``lam ~ Beta(alpha, alpha)`` for the batch.
    The caller mixes the loss the same way, so labels and teacher logits are mixed alike::

        x, perm, lam = mixup(x, 0.3, 0.5, gen)
        loss = lam * loss_fn(out, y, t) + (1 - lam) * loss_fn(out, y[perm], t[perm])

    Args:
        x: the batch ``(batch, ...)``.
        alpha: Beta distribution parameter, > 0.
        p: probability that this batch is mixed, in [0, 1].
        generator: random generator, for reproducibility.

    Returns:
        ``(mixed batch, perm, lam)``, ``perm`` on the batch's device; ``(x, None, 1.0)`` when the
        batch is left as it is.
    """
    _check_probability("mixup", p)
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    if p == 0.0 or torch.rand((), generator=generator).item() >= p:
        return x, None, 1.0
    lam = float(_beta(alpha, (), generator))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], perm, lam


def device_swap(
    x: torch.Tensor,
    index: torch.Tensor,
    simulated: torch.Tensor,
    available: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace clips that have device-simulated copies by a random copy, each with probability p.

    Args:
        x: the batch ``(batch, channels, freq, time)``, rows ``index`` of the training split.
        index: ``(batch,)`` row of each clip in the training split, on ``available``'s device.
        simulated: ``(n_train, copies, channels, freq, time)`` simulated copies of every training
            clip (rows without a copy are ignored), normalized like ``x``; any float dtype.
        available: ``(n_train,)`` bool, True where a clip has simulated copies (device A), on
            the generator's device.
        p: probability that such a clip is swapped, in [0, 1].
        generator: random generator, for reproducibility.

    Returns:
        The batch with the swapped clips (a new tensor), or ``x`` itself when ``p`` is 0.
    """
    _check_probability("device simulation", p)
    if p == 0.0:
        return x
    batch = len(index)
    swap = available[index] & (torch.rand(batch, generator=generator) < p)
    copy = torch.randint(0, simulated.shape[1], (batch,), generator=generator)
    out = x.clone()
    rows = index[swap].to(simulated.device)
    out[swap.to(x.device)] = simulated[rows, copy[swap].to(simulated.device)].to(x.dtype)
    return out
