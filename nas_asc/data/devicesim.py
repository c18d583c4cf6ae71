"""Device simulation with microphone impulse responses and dynamic-range compensation.

Implements Sec. 2.1 of report 004 (BC-Res2Net, DCASE 2023; after Sonowal & Tamse, Interspeech
2022): a device-A recording ``X`` is convolved with a microphone impulse response ``X_ir`` to
simulate an unknown device (Eq. 1, ``X_un = X * X_ir``), then rescaled so that its amplitude range
matches the original's (Eq. 2, ``X_un * (max X - min X) / (max X_un - min X_un)``). The report
draws from 68 measured vintage-microphone IRs (MicIRP); here the IRs come from a folder of WAV
files the user provides (:func:`load_impulse_responses`, ``--ir-dir``) or, when none is given,
from a generated set of plausible small-microphone responses (:func:`generate_impulse_responses`).

Only device-A clips of the training split are simulated; the evaluate split is never touched.
The simulated log-mel spectrograms are computed once per (dataset, front end, IR set, copies,
seed) by :func:`load_simulated_devices`, cached under ``<cache root>/devicesim/`` (float16,
written atomically with a checksum) and served as :class:`SimulatedDevices`, from which the
training loop swaps a device-A clip for one of its simulated copies with probability
``devicesim_p``.

The report convolves reassembled 10-second recordings; TAU22 clips here are 1 second, so the
convolution keeps the first ``len(X)`` samples of the full (causal) convolution. Leading silence
is trimmed from IRs so that the simulated device does not also shift the clip in time.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from nas_asc._cache import cache_root, content_key, load_torch, save_torch
from nas_asc.data.features import FeatureSet, FrontEnd, logmel
from nas_asc.errors import DatasetError, NasAscError

__all__ = [
    "DEFAULT_GENERATED_IRS",
    "MAX_IR_SECONDS",
    "SimulatedDevices",
    "generate_impulse_responses",
    "load_impulse_responses",
    "load_simulated_devices",
    "simulate",
]

_LOG = logging.getLogger(__name__)
_VERSION = 1  # bump when the computation changes, so stale caches are not reused
_CHUNK = 128  # clips per batched read + resample + convolution + STFT
_DEVICE = "a"  # the reference device whose clips are simulated (report 004)

#: Number of generated IRs when no folder is given (report 004 used 68 MicIRP responses).
DEFAULT_GENERATED_IRS = 68
#: Longest plausible microphone IR after trimming silence; longer files are refused.
MAX_IR_SECONDS = 1.0
_LEAD_DB = -40.0  # leading samples below this level re the peak are silence (trimmed)
_TAIL_DB = -80.0  # trailing samples below this level re the peak are silence (trimmed)
_LEAD_MARGIN_S = 0.0005  # keep 0.5 ms before the onset: measured IRs ring before their peak


@dataclass
class SimulatedDevices:
    """Device-simulated log-mel copies of the training split's device-A clips.

    Rows follow the training :class:`~nas_asc.data.features.FeatureSet` they were built for.
    Rows without a simulated copy (clips of other devices) hold the original clip's features in
    every copy, so indexing any row is safe; ``available`` says which rows are simulated. The
    training loop swaps clips with :func:`nas_asc.train.augment.device_swap`.
    """

    x: torch.Tensor  # (n_train, copies, 1, n_mels, frames) float16, train-split normalized
    available: torch.Tensor  # (n_train,) bool, True where simulated copies exist (device A)
    ir_index: torch.Tensor | None = None  # (n_train, copies) IR used per copy, -1 where none

    def __post_init__(self) -> None:
        if self.x.ndim != 5 or self.x.shape[2] != 1:
            raise ValueError(
                "SimulatedDevices.x must have shape (n_train, copies, 1, n_mels, frames), "
                f"got {tuple(self.x.shape)}"
            )
        if self.available.shape != (self.x.shape[0],) or self.available.dtype != torch.bool:
            raise ValueError(
                f"SimulatedDevices.available must be a bool tensor of shape ({self.x.shape[0]},),"
                f" got {self.available.dtype} {tuple(self.available.shape)}"
            )

    @property
    def copies(self) -> int:
        """Simulated copies per device-A clip."""
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])


# --------------------------------------------------------------------------- Eq. 1 and Eq. 2


def simulate(wave: torch.Tensor | np.ndarray, ir: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Simulate a device: convolve with an IR (Eq. 1), then compensate the range (Eq. 2).

    The output keeps the input's length (the first ``len(wave)`` samples of the full causal
    convolution) and is rescaled so that its ``max - min`` equals the input's, which bounds the
    level change an IR introduces; a silent result is left unscaled.

    Args:
        wave: Waveform(s) ``(..., samples)``.
        ir: Impulse response(s) ``(..., taps)``; leading dimensions broadcast against ``wave``'s.

    Returns:
        Float32 tensor of the broadcast leading shape and ``samples`` samples.

    Example:
        >>> y = simulate(torch.randn(2, 32000), torch.tensor([1.0, 0.3, 0.1]))
        >>> y.shape
        torch.Size([2, 32000])
    """
    wave = torch.as_tensor(wave, dtype=torch.float32)
    ir = torch.as_tensor(ir, dtype=torch.float32)
    if wave.ndim == 0 or ir.ndim == 0 or wave.shape[-1] == 0 or ir.shape[-1] == 0:
        raise ValueError(
            f"simulate needs non-empty (..., samples) waves and (..., taps) IRs, "
            f"got shapes {tuple(wave.shape)} and {tuple(ir.shape)}"
        )
    length = wave.shape[-1]
    # Circular convolution of n >= samples + taps - 1 points equals the linear one on the kept
    # samples; a 5-smooth n keeps the FFT fast (n = samples + taps - 1 is often a large prime
    # times 2, several times slower). Each wave's spectrum is computed once for all its IRs.
    n = _fast_length(length + ir.shape[-1] - 1)
    spectrum = torch.fft.rfft(wave, n) * torch.fft.rfft(ir, n)
    out = torch.fft.irfft(spectrum, n)[..., :length]
    span = wave.amax(-1, keepdim=True) - wave.amin(-1, keepdim=True)
    span_out = out.amax(-1, keepdim=True) - out.amin(-1, keepdim=True)
    gain = torch.where(span_out > 0, span / span_out.clamp_min(1e-30), torch.ones_like(span))
    return out * gain


def _fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (a fast FFT size)."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


# --------------------------------------------------------------------------- impulse responses


def _trim_and_normalize(ir: np.ndarray, sample_rate: int) -> np.ndarray:
    """Trim leading/trailing silence and scale to unit energy."""
    mag = np.abs(ir)
    peak = float(mag.max())
    loud = np.flatnonzero(mag >= peak * 10 ** (_LEAD_DB / 20))
    start = max(0, int(loud[0]) - int(round(_LEAD_MARGIN_S * sample_rate)))
    audible = np.flatnonzero(mag >= peak * 10 ** (_TAIL_DB / 20))
    ir = ir[start : int(audible[-1]) + 1]
    # Unit energy rather than unit peak: Eq. 2 makes the IR's gain irrelevant to the result, so
    # the scale only matters for float32 headroom (unit energy keeps the output power close to the
    # input's for broadband audio) and for the cache digest (rescaled copies of a folder map to
    # the same simulated set).
    return (ir / np.sqrt(np.sum(ir.astype(np.float64) ** 2))).astype(np.float32)


def load_impulse_responses(ir_dir: str | Path, sample_rate: int) -> list[np.ndarray]:
    """Read every WAV file under a folder as a microphone impulse response.

    Files are found recursively (``*.wav``, any case) and read in sorted path order with
    :func:`nas_asc.data.tau22.read_audio` (soundfile: 16/24/32-bit PCM and float WAV;
    multi-channel files are averaged to mono), resampled to ``sample_rate``, trimmed of leading
    silence (samples more than 40 dB below the peak, keeping 0.5 ms before the onset) and of
    trailing samples more than 80 dB below the peak, and scaled to unit energy.

    Args:
        ir_dir: Folder of IR WAV files (e.g. the MicIRP collection), the CLI's ``--ir-dir``.
        sample_rate: Rate of the front end the IRs will be applied at (Hz).

    Returns:
        One float32 array per file.

    Raises:
        NasAscError: The folder is missing or holds no WAV file, or a file is unreadable, empty,
            silent, non-finite or longer than :data:`MAX_IR_SECONDS` after trimming.
    """
    from nas_asc.data.tau22 import read_audio

    folder = Path(ir_dir).expanduser()
    if not folder.exists():
        raise NasAscError(
            f"impulse-response folder {folder} does not exist; pass --ir-dir a folder of "
            "microphone IR WAV files, or omit it to use generated responses"
        )
    if not folder.is_dir():
        raise NasAscError(
            f"impulse-response folder {folder} is not a directory; pass --ir-dir the folder "
            "that holds the IR WAV files"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise NasAscError(
            f"impulse-response folder {folder} holds no .wav files; put the microphone IRs "
            "there as WAV files, or omit --ir-dir to use generated responses"
        )
    irs = []
    for path in files:
        try:
            samples, rate = read_audio(path)
        except DatasetError as exc:
            # Keep read_audio's diagnosis ("cannot be decoded (...)", "holds no samples") but
            # not its dataset-specific advice.
            detail = str(exc).split("; ")[0].removeprefix(f"audio file {path} ")
            raise NasAscError(
                f"impulse response {path} {detail}; replace it with a valid WAV file or remove it"
            ) from exc
        if not np.isfinite(samples).all():
            raise NasAscError(
                f"impulse response {path} contains NaN or infinite samples; fix or remove it"
            )
        if not np.any(samples):
            raise NasAscError(f"impulse response {path} is silent (all zeros); remove it")
        if rate != sample_rate:
            samples = torchaudio.functional.resample(
                torch.from_numpy(samples), rate, sample_rate
            ).numpy()
        ir = _trim_and_normalize(samples, sample_rate)
        seconds = len(ir) / sample_rate
        if seconds > MAX_IR_SECONDS:
            raise NasAscError(
                f"impulse response {path} lasts {seconds:.2f} s after trimming silence, longer "
                f"than the {MAX_IR_SECONDS:g} s a microphone IR plausibly lasts (is it a "
                "recording?); remove it from the folder"
            )
        irs.append(ir)
    return irs


def _minimum_phase(log_mag: np.ndarray) -> np.ndarray:
    """Minimum-phase impulse response of a log-magnitude response on an rfft grid (cepstrum)."""
    n_fft = 2 * (len(log_mag) - 1)
    cep = np.fft.irfft(log_mag, n_fft)
    # Folding the real cepstrum onto positive quefrencies gives the causal, minimum-phase
    # spectrum with the same magnitude (homomorphic method, Oppenheim & Schafer Sec. 13.8).
    fold = np.zeros(n_fft)
    fold[0] = cep[0]
    fold[1 : n_fft // 2] = 2 * cep[1 : n_fft // 2]
    fold[n_fft // 2] = cep[n_fft // 2]
    return np.fft.irfft(np.exp(np.fft.rfft(fold)), n_fft)


def _generated_ir(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One random microphone response; the model is in generate_impulse_responses."""
    n_fft = 8192
    nyquist = sample_rate / 2
    f = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    f[0] = f[1] / 2  # avoid log(0); the high-pass pushes DC to the floor anyway
    octaves = np.log2(f / 1000.0)
    # Low-frequency roll-off: Butterworth-like high-pass (small capsule, vent, DC blocker).
    f_lo = rng.uniform(100.0, 300.0)
    order_lo = rng.integers(1, 4)
    db = 10 * np.log10((f / f_lo) ** (2 * order_lo) / (1 + (f / f_lo) ** (2 * order_lo)))
    # Presence peak or dip: a Gaussian bump over log-frequency (port/cavity resonance).
    f_p = rng.uniform(2000.0, 6000.0)
    gain_p = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 9.0)
    width_p = rng.uniform(0.3, 1.2)
    db += gain_p * np.exp(-0.5 * ((octaves - np.log2(f_p / 1000.0)) / (width_p / 2.355)) ** 2)
    # High-frequency roll-off: Butterworth-like low-pass (diaphragm mass, anti-aliasing).
    f_hi = min(rng.uniform(8000.0, 16000.0), 0.95 * nyquist)
    order_hi = rng.integers(2, 5)
    db += -10 * np.log10(1 + (f / f_hi) ** (2 * order_hi))
    # Smooth ripple: a random walk at 1/2-octave knots, interpolated over log-frequency.
    knots = np.arange(np.log2(20 / 1000), np.log2(nyquist / 1000) + 0.5, 0.5)
    ripple = np.cumsum(rng.normal(0.0, 0.8, len(knots)))
    db += np.interp(octaves, knots, ripple - ripple.mean())
    db = np.maximum(db, -100.0)  # floor so the cepstrum stays finite
    h = _minimum_phase(db * (math.log(10) / 20))
    # Short decaying tail: sparse reflections from the housing/body, filtered by the same
    # capsule (convolved with h), a few ms long and 20-40 dB below the direct sound.
    tau = rng.uniform(0.5e-3, 4e-3)
    n_tail = int(round(6 * tau * sample_rate))
    t = np.arange(n_tail) / sample_rate
    tail = rng.normal(0.0, 1.0, n_tail) * np.exp(-t / tau)
    tail *= (rng.random(n_tail) < 0.3) * 10 ** (-rng.uniform(20.0, 40.0) / 20)
    tail[0] = 1.0  # the direct path
    n_taps = int(round(0.04 * sample_rate))  # 40 ms: long enough for a 100 Hz high-pass to ring
    h = np.convolve(h[:n_taps], tail)[:n_taps]
    fade = max(1, n_taps // 4)
    h[-fade:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, fade)))  # taper the truncation
    return _trim_and_normalize(h.astype(np.float32), sample_rate)


def generate_impulse_responses(n: int, sample_rate: int, seed: int = 0) -> list[np.ndarray]:
    """A generated set of plausible microphone impulse responses (used without ``--ir-dir``).

    Each response is a minimum-phase FIR (real-cepstrum method) of a random smooth magnitude
    response made of: a high-pass roll-off at 100-300 Hz of order 1-3 (small MEMS/phone
    capsules), a presence peak or dip of 2-9 dB at 2-6 kHz, 0.3-1.2 octaves wide, a low-pass
    roll-off at 8-16 kHz (capped at 0.95 x Nyquist) of order 2-4, and a +-1-3 dB smooth ripple
    (random walk over half-octave knots). It is convolved with a short sparse decaying tail
    (time constant 0.5-4 ms, 20-40 dB below the direct path: reflections from the housing),
    truncated to 40 ms with a raised-cosine fade, trimmed and scaled to unit energy like loaded
    IRs. Response ``i`` draws from its own stream keyed by ``(seed, i)``, so a set of ``n`` is a
    prefix of a larger set with the same seed.

    Args:
        n: Number of responses (``DEFAULT_GENERATED_IRS`` = 68 as in report 004).
        sample_rate: Rate of the front end (Hz).
        seed: Seed of the set.

    Returns:
        ``n`` float32 arrays.
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"number of generated impulse responses must be a positive int, got {n!r}")
    if not isinstance(sample_rate, int) or sample_rate < 8000:
        raise ValueError(
            f"impulse-response sample_rate must be an integer >= 8000 Hz, got {sample_rate!r}"
        )
    return [_generated_ir(np.random.default_rng([seed, i]), sample_rate) for i in range(n)]


def _ir_digest(irs: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for ir in irs:
        digest.update(len(ir).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(ir, dtype="<f4").tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- simulated set


def _compute(
    dataset,
    filenames: list[str],
    bank: torch.Tensor,
    choice: np.ndarray,
    frontend: FrontEnd,
    progress: bool,
) -> torch.Tensor:
    """Raw float16 log-mel ``(clips, copies, n_mels, frames)`` of the simulated clips."""
    from tqdm.auto import tqdm

    from nas_asc.data.tau22 import read_audio

    seconds = 1.0
    copies = choice.shape[1]
    target = int(round(seconds * frontend.sample_rate))
    out = torch.empty(
        len(filenames), copies, frontend.n_mels, frontend.frames(seconds), dtype=torch.float16
    )
    bar = tqdm(total=len(filenames), desc="device simulation", unit="clip", disable=not progress)
    for start in range(0, len(filenames), _CHUNK):
        names = filenames[start : start + _CHUNK]
        by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, name in enumerate(names):
            wave, rate = read_audio(dataset.path(name))
            by_rate.setdefault(rate, []).append((start + i, wave))
        for rate, items in by_rate.items():
            length = int(round(seconds * rate))
            batch = np.zeros((len(items), length), dtype=np.float32)
            for j, (_, wave) in enumerate(items):  # pad or trim to one second, as features.py
                batch[j, : min(length, len(wave))] = wave[:length]
            waves = torch.from_numpy(batch)
            if rate != frontend.sample_rate:  # the same resampling logmel() would apply
                waves = torchaudio.functional.resample(waves, rate, frontend.sample_rate)
            rows = [idx for idx, _ in items]
            irs = bank[torch.from_numpy(choice[rows])]  # (clips, copies, taps)
            sim = simulate(waves[:, None, :target], irs)
            feats = logmel(sim.reshape(-1, sim.shape[-1]), frontend.sample_rate, frontend)
            out[rows] = feats.reshape(len(rows), copies, *feats.shape[1:]).to(torch.float16)
        bar.update(len(names))
    bar.close()
    return out


def _fits(blob, filenames: list[str], shape: tuple[int, ...]) -> bool:
    """Whether a cache entry holds the simulated clips ``filenames`` at ``shape``."""
    try:
        return (
            blob["filenames"] == filenames
            and tuple(blob["logmel"].shape) == shape
            and tuple(blob["ir_index"].shape) == shape[:2]
        )
    except (KeyError, TypeError, AttributeError):
        return False


def load_simulated_devices(
    dataset,
    frontend: FrontEnd,
    train_set: FeatureSet,
    ir_dir: str | Path | None = None,
    copies: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> SimulatedDevices:
    """Device-simulated copies of the training split's device-A clips, cached on disk.

    For every device-A clip of ``train_set`` (never the evaluate split), ``copies`` simulated
    versions are made with IRs drawn by a generator seeded with ``seed`` (distinct IRs per clip
    while the set has at least ``copies``), turned into log-mel spectrograms with ``frontend`` and
    normalized with ``train_set.mean``/``std``. The raw log-mels are cached under
    ``<cache root>/devicesim/`` keyed by the dataset fingerprint, the front end, a digest of the
    IR set, ``copies``, ``seed`` and the simulated clips' names.

    Args:
        dataset: Loaded :class:`~nas_asc.data.tau22.TAU22` (for the audio files).
        frontend: Front end ``train_set`` was computed with.
        train_set: Training split features from :func:`~nas_asc.data.features.load_features`.
        ir_dir: Folder of IR WAV files; None uses :data:`DEFAULT_GENERATED_IRS` generated ones
            (:func:`generate_impulse_responses` with ``seed``).
        copies: Simulated versions per device-A clip.
        seed: Seed of the IR draw (and of the generated IR set).
        progress: Show a progress bar while computing.

    Returns:
        The simulated features, row-aligned with ``train_set``.

    Raises:
        NasAscError: Bad ``copies``, a ``train_set`` that is not this dataset's training split
            for this front end, or an unusable IR folder.
    """
    if not isinstance(copies, int) or isinstance(copies, bool) or copies <= 0:
        raise NasAscError(f"device simulation copies must be a positive integer, got {copies!r}")
    train_names = set(dataset.train.filename)
    stray = [name for name in train_set.filenames if name not in train_names]
    if stray:
        raise NasAscError(
            f"train_set holds {len(stray)} clip(s) outside the dataset's training split, first "
            f"{stray[0]!r}; pass the training FeatureSet of this dataset (evaluate clips must "
            "stay unsimulated)"
        )
    expected = frontend.input_shape()
    if tuple(train_set.shape[1:]) != expected:
        raise NasAscError(
            f"train_set features have shape {tuple(train_set.shape[1:])} but the front end "
            f"gives {expected}; pass the front end the features were computed with"
        )
    if ir_dir is None:
        irs = generate_impulse_responses(DEFAULT_GENERATED_IRS, frontend.sample_rate, seed)
    else:
        irs = load_impulse_responses(ir_dir, frontend.sample_rate)
    available = torch.tensor([d == _DEVICE for d in train_set.devices], dtype=torch.bool)
    rows = torch.nonzero(available).flatten()
    names = [train_set.filenames[i] for i in rows.tolist()]
    order = sorted(range(len(names)), key=names.__getitem__)  # draws independent of row order
    sorted_names = [names[i] for i in order]
    key = content_key(
        _VERSION,
        dataset.fingerprint,
        frontend.to_dict(),
        _ir_digest(irs),
        copies,
        seed,
        hashlib.sha256("\n".join(sorted_names).encode()).hexdigest(),
    )
    path = cache_root() / "devicesim" / f"devicesim-{key}.pt"
    blob = load_torch(path)  # None if absent or corrupt (then deleted with a warning)
    shape = (len(sorted_names), copies, *expected[1:])
    if blob is not None and not _fits(blob, sorted_names, shape):
        # a checksum-valid entry for other clips: a key collision or a bug, never use it
        _LOG.warning("device-simulation cache %s does not match the dataset; recomputing", path)
        blob = None
    if blob is not None:
        feats, choice = blob["logmel"], blob["ir_index"]
    else:
        rng = np.random.default_rng(seed)
        replace = len(irs) < copies
        choice = np.zeros((len(sorted_names), copies), dtype=np.int64)
        for k in range(len(sorted_names)):
            choice[k] = rng.choice(len(irs), size=copies, replace=replace)
        bank = torch.zeros(len(irs), max(len(ir) for ir in irs))
        for i, ir in enumerate(irs):  # zero-padding the tail leaves each convolution unchanged
            bank[i, : len(ir)] = torch.from_numpy(ir)
        feats = _compute(dataset, sorted_names, bank, choice, frontend, progress)
        choice = torch.from_numpy(choice).long()
        save_torch(
            {
                "filenames": sorted_names,
                "logmel": feats,
                "ir_index": choice,
                "frontend": frontend.to_dict(),
            },
            path,
        )
    if not rows.numel():
        _LOG.warning("training split has no device-%s clips; nothing is simulated", _DEVICE)
    # the normalized features, copied a slice at a time (no float32 copy of the whole split)
    x = torch.empty((len(train_set), copies, *train_set.shape[1:]), dtype=torch.float16)
    for start in range(0, len(train_set), 2048):
        part = slice(start, start + 2048)
        x[part] = train_set.batch(part).to(torch.float16).unsqueeze(1)
    ir_index = torch.full((len(train_set), copies), -1, dtype=torch.long)
    if rows.numel():
        target = rows[torch.tensor(order, dtype=torch.long)]
        x[target] = ((feats.float() - train_set.mean) / train_set.std).unsqueeze(2).half()
        ir_index[target] = choice
    return SimulatedDevices(x=x, available=available, ir_index=ir_index)
