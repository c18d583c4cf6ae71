"""Log-mel front end (torchaudio) and the on-disk feature cache.

Log-mel spectrograms are computed once per (clip group, front end), where the groups are the
training split and the test fold, stored as float16 under ``<cache root>/features/`` (written
atomically with a SHA-256 checksum, keyed by the group's content hash and the front-end
configuration) and shared by every trial whose front end matches. Trials read them as one
in-memory tensor. A cache entry that fails its checksum or does not fit the dataset is deleted
and recomputed, never used.

Clips that depart from the TAU22 format (44.1 kHz mono) are converted (resampled, channels
averaged), with one note on the log saying how many and how.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from nas_asc._cache import cache_root, content_key, load_torch, save_torch

__all__ = ["FrontEnd", "FeatureSet", "logmel", "load_features"]

_LOG = logging.getLogger(__name__)
_VERSION = 2  # bump when the computation changes, so stale caches are not reused (2: per group)
_CHUNK = 256  # clips per batched resample + STFT


@dataclass(frozen=True)
class FrontEnd:
    sample_rate: int = 32000  # audio is resampled to this rate first (Hz)
    n_fft: int = 2048  # FFT size (samples)
    win_length: int = 2048  # analysis window length (samples)
    hop_length: int = 744  # hop (samples); 744 at 32 kHz gives 44 frames per second
    n_mels: int = 128  # Mel bins
    f_min: float = 0.0  # lowest Mel filter edge (Hz)
    f_max: float | None = None  # highest Mel filter edge (Hz); None means sample_rate / 2
    window: str = "hann"  # analysis window: hann|hamming

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"front end {name} must be a positive integer, got {value!r}")
        if self.win_length > self.n_fft:
            raise ValueError(
                f"front end win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})"
            )
        if self.window not in _WINDOWS:
            raise ValueError(
                f"front end window must be one of {sorted(_WINDOWS)}, got {self.window!r}"
            )
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ValueError(
                f"front end needs 0 <= f_min < f_max <= sample_rate/2 ({nyquist:g} Hz), "
                f"got f_min={self.f_min}, f_max={self.f_max}"
            )

    def frames(self, seconds: float = 1.0) -> int:
        """Number of frames for a clip of ``seconds`` (centered STFT)."""
        return int(round(seconds * self.sample_rate)) // self.hop_length + 1

    def input_shape(self, seconds: float = 1.0) -> tuple[int, int, int]:
        """Shape of one model input, ``(1, n_mels, frames)``."""
        return (1, self.n_mels, self.frames(seconds))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window}


def logmel(waves: torch.Tensor, source_rate: int, frontend: FrontEnd) -> torch.Tensor:
    """Log-mel spectrograms ``(batch, n_mels, frames)`` of ``waves`` ``(batch, samples)``."""
    if source_rate != frontend.sample_rate:
        waves = torchaudio.functional.resample(waves, source_rate, frontend.sample_rate)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=frontend.sample_rate,
        n_fft=frontend.n_fft,
        win_length=frontend.win_length,
        hop_length=frontend.hop_length,
        f_min=frontend.f_min,
        f_max=frontend.f_max,
        n_mels=frontend.n_mels,
        window_fn=_WINDOWS[frontend.window],
        power=2.0,
    )
    return torch.log(mel(waves) + 1e-5)


class FeatureSet:
    """Features of one split: normalized log-mels, labels, devices and meta.csv rows.

    The features are held either as one normalized float32 tensor ``x`` (clips, 1, n_mels,
    frames), or as the cache's float16 log-mels ``raw`` (clips, n_mels, frames), normalized with
    ``mean`` and ``std`` when read. :meth:`batch` reads some clips without materializing the
    rest, :meth:`to` moves the set to a device (``raw`` stays float16 there, half the memory of
    float32), and :attr:`x` gives the whole normalized tensor (made on first use, then kept).
    Reading through either gives the same float32 values bit for bit:
    ``(raw.float() - mean) / std``.
    """

    def __init__(
        self,
        x: torch.Tensor | None = None,
        *,
        y: torch.Tensor,
        devices: list[str],
        filenames: list[str],
        rows: torch.Tensor,
        mean: float = 0.0,
        std: float = 1.0,
        raw: torch.Tensor | None = None,
    ) -> None:
        if (x is None) == (raw is None):
            raise ValueError("a FeatureSet holds exactly one of x (normalized) and raw (log-mels)")
        self._x = x
        self.raw = raw
        self.y = y
        self.devices = devices
        self.filenames = filenames
        self.rows = rows
        self.mean = mean  # log-mel mean subtracted (training split): the deployed front end too
        self.std = std  # log-mel standard deviation divided by (training split)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"FeatureSet({len(self)} clips, shape {self.shape}, device {self.device})"

    @property
    def shape(self) -> tuple[int, ...]:
        """``(clips, 1, n_mels, frames)``, the shape of :attr:`x`."""
        if self.raw is None:
            return tuple(self._x.shape)
        return (self.raw.shape[0], 1, *self.raw.shape[1:])

    @property
    def device(self) -> torch.device:
        return (self._x if self.raw is None else self.raw).device

    @property
    def x(self) -> torch.Tensor:
        """All clips, normalized float32 ``(clips, 1, n_mels, frames)`` (made once, then kept)."""
        if self._x is None:
            self._x = self._normalize(self.raw).contiguous()
        return self._x

    def _normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return ((raw.float() - self.mean) / self.std).unsqueeze(1)

    def batch(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Normalized float32 features of clips ``idx``, on the set's device: ``x[idx]``."""
        if self._x is not None:
            return self._x[idx]
        return self._normalize(self.raw[idx])

    def to(self, device: torch.device | str) -> FeatureSet:
        """This set with its tensors on ``device`` (itself when they are already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        return FeatureSet(
            self._x.to(device) if self.raw is None else None,
            raw=None if self.raw is None else self.raw.to(device),
            y=self.y.to(device),
            devices=self.devices,
            filenames=self.filenames,
            rows=self.rows,
            mean=self.mean,
            std=self.std,
        )

    def subset(self, idx: torch.Tensor) -> FeatureSet:
        """The clips ``idx`` (a LongTensor), with this set's normalization."""
        keep = idx.tolist()
        return FeatureSet(
            self._x[idx] if self.raw is None else None,
            raw=None if self.raw is None else self.raw[idx],
            y=self.y[idx],
            devices=[self.devices[i] for i in keep],
            filenames=[self.filenames[i] for i in keep],
            rows=self.rows[idx],
            mean=self.mean,
            std=self.std,
        )


def _cache_path(dataset, source: str, frontend: FrontEnd) -> Path:
    key = content_key(_VERSION, dataset.sources[source][0], frontend.to_dict())
    return cache_root() / "features" / f"logmel-{key}.pt"


def _compute(dataset, filenames: list[str], frontend: FrontEnd, progress: bool) -> torch.Tensor:
    from tqdm.auto import tqdm

    from nas_asc.data.tau22 import SAMPLE_RATE, read_audio

    seconds = 1.0
    out = torch.empty(
        len(filenames), frontend.n_mels, frontend.frames(seconds), dtype=torch.float16
    )
    bar = tqdm(
        total=len(filenames),
        desc=f"log-mel {frontend.n_mels} bins",
        unit="clip",
        disable=not progress,
    )
    converted: dict[str, int] = {}  # departure from 44.1 kHz mono -> clips
    for start in range(0, len(filenames), _CHUNK):
        names = filenames[start : start + _CHUNK]
        by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, name in enumerate(names):
            notes: set[str] = set()
            wave, rate = read_audio(dataset.path(name), notes)
            if rate != SAMPLE_RATE:
                notes.add(f"{rate} Hz")
            if len(wave) < 0.99 * seconds * rate:  # TAU22 clips are 1 s: tolerate 10 ms
                notes.add("short")
            elif len(wave) > 1.01 * seconds * rate:
                notes.add("long")
            for note in notes:
                converted[note] = converted.get(note, 0) + 1
            by_rate.setdefault(rate, []).append((start + i, wave))
        for rate, items in by_rate.items():
            length = int(round(seconds * rate))
            batch = np.zeros((len(items), length), dtype=np.float32)
            for j, (_, wave) in enumerate(items):  # pad or trim to exactly one second
                batch[j, : min(length, len(wave))] = wave[:length]
            feats = logmel(torch.from_numpy(batch), rate, frontend)
            out[[idx for idx, _ in items]] = feats.to(torch.float16)
        bar.update(len(names))
    bar.close()
    if converted:
        # not an error: the clips are usable, but the user should know their data is unusual
        _LOG.warning(
            "note: converted clips that are not 1 s of 44.1 kHz mono as in TAU22: %s",
            ", ".join(_conversion(k, n, frontend) for k, n in sorted(converted.items())),
        )
    return out


def _conversion(kind: str, n: int, frontend: FrontEnd) -> str:
    if kind == "short":
        return f"{n} shorter than 1 s padded with silence"
    if kind == "long":
        return f"{n} longer than 1 s cut to their first second"
    if kind.endswith("Hz"):
        return f"{n} at {kind} resampled to {frontend.sample_rate} Hz"
    return f"{n} with {kind} averaged to mono"


def _fits(blob, filenames: list[str], frontend: FrontEnd) -> bool:
    """Whether a loaded cache entry holds features of exactly these clips and front end."""
    try:
        feats = blob["logmel"]
        return (
            blob["filenames"] == filenames
            and blob["frontend"] == frontend.to_dict()
            and isinstance(feats, torch.Tensor)
            and tuple(feats.shape) == (len(filenames), frontend.n_mels, frontend.frames())
        )
    except (KeyError, TypeError):
        return False


def _cached_logmel(
    dataset, source: str, frontend: FrontEnd, progress: bool
) -> tuple[list[str], torch.Tensor]:
    """Log-mels of every clip of one clip group (``dataset.sources[source]``), cached."""
    path = _cache_path(dataset, source, frontend)
    filenames = list(dataset.sources[source][1])
    blob = load_torch(path)  # None if absent or corrupt (then deleted with a warning)
    if blob is not None:
        if _fits(blob, filenames, frontend):
            return filenames, blob["logmel"]
        # a checksum-valid entry for other clips: a key collision or a bug, never use it
        _LOG.warning("feature cache %s does not match the dataset; recomputing it", path)
    feats = _compute(dataset, filenames, frontend, progress)
    save_torch({"filenames": filenames, "logmel": feats, "frontend": frontend.to_dict()}, path)
    return filenames, feats


def load_features(
    dataset, frontend: FrontEnd, progress: bool = True
) -> tuple[FeatureSet, FeatureSet]:
    """Train and evaluate :class:`FeatureSet` of a TAU22 dataset or view for ``frontend``.

    Log-mels are computed and cached per clip group (the training split, the test fold), and
    only the groups the dataset's frames come from are read: a search view (training part and
    validation split, :mod:`nas_asc.data.protocol`) never opens a clip of the test fold.
    Features are normalized by the mean and standard deviation of the ``train`` frame (one
    scalar each), which the deployed front end applies as well.
    """
    groups = {}  # source -> (row of each clip name, log-mels)
    for source in dict.fromkeys((dataset.train_source, dataset.evaluate_source)):
        filenames, feats = _cached_logmel(dataset, source, frontend, progress)
        groups[source] = ({name: i for i, name in enumerate(filenames)}, feats)
    splits = []
    for frame, source in (
        (dataset.train, dataset.train_source),
        (dataset.evaluate, dataset.evaluate_source),
    ):
        index, feats = groups[source]
        idx = torch.tensor([index[name] for name in frame.filename], dtype=torch.long)
        splits.append((frame, feats[idx]))
    train_x = splits[0][1].float()
    mean, std = train_x.mean(), train_x.std()
    del train_x
    if not math.isfinite(float(std)) or float(std) == 0.0:
        raise ValueError("training features have zero or non-finite variance; is the audio silent?")
    sets = []
    for frame, raw in splits:
        sets.append(
            FeatureSet(
                raw=raw,
                y=torch.tensor(frame.label.to_numpy(), dtype=torch.long),
                devices=list(frame.device),
                filenames=list(frame.filename),
                rows=torch.tensor(frame.row.to_numpy(), dtype=torch.long),
                mean=float(mean),
                std=float(std),
            )
        )
    return sets[0], sets[1]
