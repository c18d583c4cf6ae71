"""Log-mel front end (torchaudio) and the on-disk feature cache.

Log-mel spectrograms are computed once per (clip group, front end), where the groups are the
training split and the test fold, and stored as float16 ``.npy`` arrays under
``<cache root>/features/`` (``logmel-<key>.npy``, keyed by the group's content hash and the
front-end configuration, written atomically with a SHA-256 checksum), each beside a small
``logmel-<key>.pt`` holding its clip names, front end, the array's checksum and per-clip sums
and squared deviations (so that the normalization of any split is computed without reading the
features). A split that is not a whole group in order (a view's training part or validation
split, :mod:`nas_asc.data.protocol`) gets an array of its own rows beside its group's
(``logmel-<key>-<split key>.npy``), written once.

Readers memory-map the arrays (copy-on-write, never written back): the processes of one machine
(search workers) share one copy through the page cache, loading holds no private copy, and pages
are read from disk when first touched. A cache entry that fails its checksum or does not fit the
dataset is deleted (with a one-line warning) and recomputed, never used. Replace or delete cache
files, never rewrite one in place while a process uses it: a process that reads a mapped file
truncated under it is killed (SIGBUS), as with any memory map.

:func:`precompute_features` computes several front ends in one pass over the audio: each clip is
read once, resampled once per sample rate and transformed by the STFT once per STFT setting, and
every Mel filterbank (built once) is applied to that power spectrogram; large clip groups are
split over worker processes that write into the memory-mapped outputs. The values are those of
:func:`logmel` on one torch thread, bit for bit, whatever the machine, the worker count and the
caller's threads: the Mel projection (a matrix product, whose float32 sums MKL splits between
threads so that its last bit depends on the thread count) always runs on one thread, and on one
thread :func:`logmel`'s values do not depend on how clips are batched.

Clips that depart from the TAU22 format (44.1 kHz mono) are converted (resampled, channels
averaged), with one note on the log saying how many and how.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio

from nas_asc._cache import (
    atomic_array,
    cache_root,
    content_key,
    discard,
    load_array,
    load_torch,
    recorded_checksum,
    save_torch,
)
from nas_asc.errors import NasAscError

__all__ = [
    "FrontEnd",
    "FeatureSet",
    "front_end_spec",
    "logmel",
    "load_features",
    "precompute_features",
]

_LOG = logging.getLogger(__name__)
# bump when the computation or the format changes, so stale caches are not reused
# (2: per group; 3: memory-mapped .npy arrays with per-clip statistics)
_VERSION = 3
_CHUNK = 64  # clips per batched resample + STFT (any size gives the same values; 64: fastest)
_TASK = 16 * _CHUNK  # clips per worker task
_PARALLEL_MIN = 8192  # fewer clips are computed in this process: worker start-up would dominate
_READ = 2048  # clips normalized or moved at a time (bounds the temporary float32 copies)


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


LOG_OFFSET = 1e-5  # log-mel = log(mel power + LOG_OFFSET)


def _mel_transform(frontend: FrontEnd) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
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


def logmel(waves: torch.Tensor, source_rate: int, frontend: FrontEnd) -> torch.Tensor:
    """Log-mel spectrograms ``(batch, n_mels, frames)`` of ``waves`` ``(batch, samples)``."""
    if source_rate != frontend.sample_rate:
        waves = torchaudio.functional.resample(waves, source_rate, frontend.sample_rate)
    return torch.log(_mel_transform(frontend)(waves) + LOG_OFFSET)


def front_end_spec(frontend: FrontEnd) -> dict:
    """Every parameter of :func:`logmel` for ``frontend``, read off the transform it builds (and
    torchaudio's resampling defaults), so that a firmware can reproduce the model's input."""
    import inspect

    mel = _mel_transform(frontend)
    stft, bank = mel.spectrogram, mel.mel_scale
    periodic = _WINDOWS[frontend.window](frontend.win_length, periodic=True)
    resample = inspect.signature(torchaudio.functional.resample).parameters
    return {
        "resampling": {
            "to_hz": frontend.sample_rate,
            "function": "torchaudio.functional.resample",
            **{
                k: resample[k].default
                for k in ("resampling_method", "lowpass_filter_width", "rolloff", "beta")
            },
        },
        "stft": {
            "n_fft": stft.n_fft,
            "win_length": stft.win_length,
            "hop_length": stft.hop_length,
            "window": frontend.window,
            "window_periodic": bool(torch.equal(stft.window, periodic)),
            "center": stft.center,
            "pad_mode": stft.pad_mode,
            "onesided": stft.onesided,
            "normalized": stft.normalized,
            "power": stft.power,
        },
        "mel": {
            "n_mels": bank.n_mels,
            "f_min": bank.f_min,
            "f_max": bank.f_max,
            "scale": bank.mel_scale,
            "filterbank_norm": bank.norm,
        },
        "log": {"base": "e", "offset": LOG_OFFSET},
    }


class FeatureSet:
    """Features of one split: normalized log-mels, labels, devices and meta.csv rows.

    The features are held either as one normalized float32 tensor ``x`` (clips, 1, n_mels,
    frames), or as the cache's float16 log-mels ``raw`` (clips, n_mels, frames), normalized with
    ``mean`` and ``std`` when read. :meth:`batch` reads some clips without materializing the
    rest, :meth:`to` moves the set to a device (``raw`` stays float16 there, half the memory of
    float32), and :attr:`x` gives the whole normalized tensor (made on first use, then kept).
    Reading through either gives the same float32 values bit for bit:
    ``(raw.float() - mean) / std``.

    The sets of :func:`load_features` hold a memory map of a cache file as ``raw`` (copy-on-write:
    shared with every process that maps it, read from disk where first touched). A set made with
    ``index`` reads the rows ``index`` of ``raw`` without copying them (what :meth:`subset` makes
    of a set of log-mels); its :attr:`raw` gives its own rows (copied on first access).
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
        index: torch.Tensor | None = None,
    ) -> None:
        if (x is None) == (raw is None):
            raise ValueError("a FeatureSet holds exactly one of x (normalized) and raw (log-mels)")
        if index is not None and raw is None:
            raise ValueError("a FeatureSet index selects rows of raw; pass raw with it")
        self._x = x
        self._store = raw  # the log-mels read (all of them, or the rows ``_index`` of them)
        self._index = index
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
    def raw(self) -> torch.Tensor | None:
        """The float16 log-mels ``(clips, n_mels, frames)``, or None for a set made from ``x``.

        For a set that reads rows of a larger tensor (``index``), the first access copies its
        rows (then kept, and read from instead of the larger tensor).
        """
        if self._index is not None:
            self._store, self._index = self._store[self._index], None
        return self._store

    @property
    def shape(self) -> tuple[int, ...]:
        """``(clips, 1, n_mels, frames)``, the shape of :attr:`x`."""
        if self._store is None:
            return tuple(self._x.shape)
        n = self._store.shape[0] if self._index is None else len(self._index)
        return (n, 1, *self._store.shape[1:])

    @property
    def device(self) -> torch.device:
        return (self._x if self._store is None else self._store).device

    @property
    def x(self) -> torch.Tensor:
        """All clips, normalized float32 ``(clips, 1, n_mels, frames)`` (made once, then kept)."""
        if self._x is None:
            x = torch.empty(self.shape, dtype=torch.float32, device=self.device)
            for start in range(0, len(x), _READ):  # no float32 temporaries of the whole set
                x[start : start + _READ] = self.batch(slice(start, start + _READ))
            self._x = x
        return self._x

    def _normalize(self, raw: torch.Tensor) -> torch.Tensor:
        # (raw.float() - mean) / std, in place on the one float32 copy
        return raw.to(torch.float32, copy=True).sub_(self.mean).div_(self.std).unsqueeze(1)

    def _read(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """The float16 log-mels of clips ``idx`` of this set."""
        return self._store[idx] if self._index is None else self._store[self._index[idx]]

    def batch(self, idx: torch.Tensor | slice) -> torch.Tensor:
        """Normalized float32 features of clips ``idx``, on the set's device: ``x[idx]``."""
        if self._x is not None:
            return self._x[idx]
        return self._normalize(self._read(idx))

    def to(self, device: torch.device | str) -> FeatureSet:
        """This set with its tensors on ``device`` (itself when they are already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        raw = None
        if self._store is not None:
            if self._index is None:
                raw = self._store.to(device)
            else:  # this set's rows only, moved a slice at a time
                shape = self.shape[:1] + self.shape[2:]
                raw = torch.empty(shape, dtype=self._store.dtype, device=device)
                for start in range(0, len(raw), _READ):
                    raw[start : start + _READ] = self._read(slice(start, start + _READ)).to(device)
        return FeatureSet(
            self._x.to(device) if self._store is None else None,
            raw=raw,
            y=self.y.to(device),
            devices=self.devices,
            filenames=self.filenames,
            rows=self.rows,
            mean=self.mean,
            std=self.std,
        )

    def subset(self, idx: torch.Tensor) -> FeatureSet:
        """The clips ``idx`` (a LongTensor), with this set's normalization.

        A set of log-mels shares them: the subset reads its rows of the same tensor.
        """
        keep = idx.tolist()
        index = None
        if self._store is not None:
            index = idx if self._index is None else self._index[idx]
        return FeatureSet(
            self._x[idx] if self._store is None else None,
            raw=self._store,
            index=index,
            y=self.y[idx],
            devices=[self.devices[i] for i in keep],
            filenames=[self.filenames[i] for i in keep],
            rows=self.rows[idx],
            mean=self.mean,
            std=self.std,
        )


# --- computing log-mels ----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _window(kind: str, length: int) -> torch.Tensor:
    return _WINDOWS[kind](length)


@functools.lru_cache(maxsize=64)
def _filterbank(frontend: FrontEnd) -> torch.Tensor:
    """The Mel filterbank ``(n_fft // 2 + 1, n_mels)`` of ``frontend``, as :func:`logmel`'s
    ``MelSpectrogram`` builds it (built once per process)."""
    f_max = frontend.f_max if frontend.f_max is not None else float(frontend.sample_rate // 2)
    return torchaudio.functional.melscale_fbanks(
        frontend.n_fft // 2 + 1,
        frontend.f_min,
        f_max,
        frontend.n_mels,
        frontend.sample_rate,
        None,
        "htk",
    )


def _passes(frontends: tuple[FrontEnd, ...]) -> dict[int, dict[tuple, list[int]]]:
    """Indices of ``frontends`` by sample rate, then by STFT setting: what one resampling and one
    power spectrogram serve."""
    passes: dict[int, dict[tuple, list[int]]] = {}
    for k, fe in enumerate(frontends):
        stft = (fe.n_fft, fe.win_length, fe.hop_length, fe.window)
        passes.setdefault(fe.sample_rate, {}).setdefault(stft, []).append(k)
    return passes


def _chunk_logmels(
    root: Path, names: list[str], frontends: tuple[FrontEnd, ...], seconds: float = 1.0
) -> tuple[list[torch.Tensor], dict[str, int]]:
    """Float16 log-mels of the clips ``names`` for each front end, and the conversion notes.

    Each clip is read once, each (source rate, sample rate) pair resampled once, each STFT
    setting transformed once; every front end's filterbank is applied to that spectrogram. The
    operations are :func:`logmel`'s, so the values are its values (on one thread).
    """
    from nas_asc.data.tau22 import SAMPLE_RATE, read_audio

    converted: dict[str, int] = {}  # departure from 44.1 kHz mono -> clips
    by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
    for i, name in enumerate(names):
        notes: set[str] = set()
        wave, rate = read_audio(root / name, notes)
        if rate != SAMPLE_RATE:
            notes.add(f"{rate} Hz")
        if len(wave) < 0.99 * seconds * rate:  # TAU22 clips are 1 s: tolerate 10 ms
            notes.add("short")
        elif len(wave) > 1.01 * seconds * rate:
            notes.add("long")
        for note in notes:
            converted[note] = converted.get(note, 0) + 1
        by_rate.setdefault(rate, []).append((i, wave))
    outs = [
        torch.empty(len(names), fe.n_mels, fe.frames(seconds), dtype=torch.float16)
        for fe in frontends
    ]
    for rate, items in by_rate.items():
        length = int(round(seconds * rate))
        batch = np.zeros((len(items), length), dtype=np.float32)
        for j, (_, wave) in enumerate(items):  # pad or trim to exactly one second
            batch[j, : min(length, len(wave))] = wave[:length]
        rows = [i for i, _ in items]
        waves = torch.from_numpy(batch)
        for sample_rate, stfts in _passes(frontends).items():
            resampled = waves
            if rate != sample_rate:
                resampled = torchaudio.functional.resample(waves, rate, sample_rate)
            for (n_fft, win_length, hop_length, window), ks in stfts.items():
                power = torchaudio.functional.spectrogram(
                    resampled,
                    0,
                    _window(window, win_length),
                    n_fft,
                    hop_length,
                    win_length,
                    2.0,
                    False,
                )
                for k in ks:  # MelScale: (..., time, freq) @ (freq, n_mels)
                    with _one_thread():
                        mel = torch.matmul(power.transpose(-1, -2), _filterbank(frontends[k]))
                    outs[k][rows] = torch.log(mel.transpose(-1, -2) + 1e-5).to(torch.float16)
    return outs, converted


def _task(
    root: str, names: list[str], start: int, frontends: tuple[FrontEnd, ...], paths: list[str]
) -> tuple[int, list[tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Compute clips ``start ...`` of a group and write them into the arrays at ``paths``.

    Returns ``start``, per front end each clip's sum and sum of squared deviations from its mean
    (float64, of the float16 values stored), and the conversion notes.
    """
    arrays = [np.load(path, mmap_mode="r+") for path in paths]
    stats = [(np.empty(len(names)), np.empty(len(names))) for _ in frontends]
    notes: dict[str, int] = {}
    for offset in range(0, len(names), _CHUNK):
        feats, converted = _chunk_logmels(Path(root), names[offset : offset + _CHUNK], frontends)
        for note, n in converted.items():
            notes[note] = notes.get(note, 0) + n
        for k, f in enumerate(feats):
            arrays[k][start + offset : start + offset + len(f)] = f.numpy()
            flat = f.reshape(len(f), -1).double()
            sums = flat.sum(1)
            m2 = (flat - (sums / flat.shape[1])[:, None]).square().sum(1)
            stats[k][0][offset : offset + len(f)] = sums.numpy()
            stats[k][1][offset : offset + len(f)] = m2.numpy()
    # unmapped: the written pages stay in the page cache (the parent syncs the file at the end),
    # not in this process
    del arrays
    return start, stats, notes


def _init_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(1)  # one process per core: threads would only contend


@contextlib.contextmanager
def _one_thread():
    """Run torch on one thread: MKL's matrix product (the Mel projection) splits its sums
    between threads, so its float32 results change in the last bit with the thread count (and
    a float16 rounding with them). On one thread they are those of one-thread :func:`logmel`
    whatever the machine, the worker count and the caller's thread setting; the product is a
    small part of the work (resampling and the STFT, which keep their threads, are the rest)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Workers:
    """Worker processes shared by the groups of one computation (started once), or none."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1 and not multiprocessing.current_process().daemon:  # daemons cannot
            ctx = multiprocessing.get_context("spawn")  # no fork of a process holding threads
            self.pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_init_worker
            )

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, filenames: list[str], tasks: list[int], args, collect) -> None:
        """Run ``_task`` for each start in ``tasks`` in the workers, ``collect`` each result;
        after a worker died (BrokenProcessPool, with a warning) leave the rest to the caller."""
        if self.pool is None:
            return
        root, frontends, paths = args
        futures = [
            self.pool.submit(_task, root, filenames[start : start + _TASK], start, frontends, paths)
            for start in tasks
        ]
        try:
            for future in concurrent.futures.as_completed(futures):
                collect(future.result())
        except BrokenProcessPool as exc:
            # the values do not depend on where they are computed: finish in this process
            _LOG.warning("feature worker processes failed (%s); computing in one process", exc)
            self.pool.shutdown(wait=False)
            self.pool = None
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _fill(
    root: Path,
    filenames: list[str],
    frontends: tuple[FrontEnd, ...],
    paths: list[Path],
    progress: bool,
    workers: _Workers,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """Compute the log-mels of ``filenames`` into the arrays at ``paths``; return the per-clip
    statistics of each front end and the conversion notes."""
    from tqdm.auto import tqdm

    n = len(filenames)
    stats = [(np.empty(n), np.empty(n)) for _ in frontends]
    notes: dict[str, int] = {}
    tasks = list(range(0, n, _TASK))
    bins = "+".join(str(fe.n_mels) for fe in frontends)
    done: set[int] = set()
    # the bar is drawn once a clip has shown varying log-mels: audio that is all silent (or not
    # finite) then fails the training statistics' check (load_features) in one line, no bar
    # printed before it; on real audio it appears after the first task
    bar = None
    clips = 0

    def collect(result) -> None:
        nonlocal bar, clips
        start, task_stats, task_notes = result
        for (sums, m2), (task_sums, task_m2) in zip(stats, task_stats, strict=True):
            sums[start : start + len(task_sums)] = task_sums
            m2[start : start + len(task_m2)] = task_m2
        for note, count in task_notes.items():
            notes[note] = notes.get(note, 0) + count
        done.add(start)
        clips += len(task_stats[0][0])
        if bar is not None:
            bar.update(len(task_stats[0][0]))
        elif progress and any(bool((task_m2 > 0).any()) for _, task_m2 in task_stats):
            desc = f"log-mel features, {bins} Mel bins (once, then cached)"
            bar = tqdm(total=n, initial=clips, desc=desc, unit="clip")

    args = (str(root), frontends, [str(p) for p in paths])
    try:
        workers.run(filenames, tasks, args, collect)
        for start in tasks:  # all of them in this process, or what the workers left
            if start not in done:
                collect(_task(args[0], filenames[start : start + _TASK], start, *args[1:]))
    finally:
        if bar is not None:
            bar.close()
    return stats, notes


def _conversion(kind: str, n: int, frontends: tuple[FrontEnd, ...]) -> str:
    if kind == "short":
        return f"{n} shorter than 1 s padded with silence"
    if kind == "long":
        return f"{n} longer than 1 s cut to their first second"
    if kind.endswith("Hz"):
        rates = " and ".join(sorted({f"{fe.sample_rate} Hz" for fe in frontends}))
        return f"{n} at {kind} resampled to {rates}"
    return f"{n} with {kind} averaged to mono"


# --- the cache -------------------------------------------------------------------------------


def _cache_path(dataset, source: str, frontend: FrontEnd) -> Path:
    """The array file of a clip group's cache entry; its metadata is the ``.pt`` file beside
    it."""
    key = content_key(_VERSION, dataset.sources[source][0], frontend.to_dict())
    return cache_root() / "features" / f"logmel-{key}.npy"


def _split_path(group: Path, filenames: list[str]) -> Path:
    """The array file of a split's rows of the group entry ``group``, keyed by its clips."""
    digest = hashlib.sha256("\n".join(filenames).encode()).hexdigest()
    return group.with_name(f"{group.stem}-{content_key(group.stem, digest)}.npy")


@dataclass
class _Entry:
    """A clip group's cache entry: its metadata, and its log-mels once they are needed."""

    path: Path
    filenames: list[str]
    sha256: str  # of the array file
    sums: np.ndarray  # per clip: sum of its log-mels (float64)
    m2: np.ndarray  # per clip: sum of squared deviations from its mean (float64)
    array: np.ndarray | None = None  # (clips, n_mels, frames) float16, memory-mapped

    def moments(self, idx: np.ndarray, per_clip: int) -> tuple[float, float]:
        """Mean and standard deviation (unbiased) of the log-mels of clips ``idx`` (each clip
        has ``per_clip`` values)."""
        count = per_clip * len(idx)
        sums = self.sums[idx]
        mean = sums.sum() / count
        m2 = self.m2[idx].sum() + per_clip * np.square(sums / per_clip - mean).sum()
        return float(mean), math.sqrt(m2 / (count - 1)) if count > 1 else math.nan


def _open_entry(dataset, source: str, frontend: FrontEnd, data: bool) -> _Entry | None:
    """The cache entry of one clip group and front end (with its mapped array if ``data``), or
    None if it must be computed: absent, corrupt (deleted with a warning) or for other clips
    (a warning)."""
    path = _cache_path(dataset, source, frontend)
    meta = load_torch(path.with_suffix(".pt"))  # None if absent or corrupt (deleted, warned)
    if meta is None:
        return None
    filenames = list(dataset.sources[source][1])
    n = len(filenames)
    try:
        fits = (
            meta["filenames"] == filenames
            and meta["frontend"] == frontend.to_dict()
            and tuple(meta["sums"].shape) == (n,)
            and tuple(meta["m2"].shape) == (n,)
            and isinstance(meta["sha256"], str)
        )
    except (KeyError, TypeError, AttributeError):
        fits = False
    if fits:
        entry = _Entry(path, filenames, meta["sha256"], meta["sums"].numpy(), meta["m2"].numpy())
        if not data:
            return entry
        entry.array = load_array(path)  # None if absent or corrupt (deleted, warned)
        if entry.array is None:
            return None
        if (
            entry.sha256 == recorded_checksum(path)
            and entry.array.dtype == np.float16
            and entry.array.shape == (n, frontend.n_mels, frontend.frames())
        ):
            return entry
    # a checksum-valid entry for other clips: a key collision or a bug, never use it
    _LOG.warning("feature cache %s does not match the dataset; recomputing it", path)
    discard(path)
    discard(path.with_suffix(".pt"))
    return None


def _entries(dataset, frontend: FrontEnd, data: dict[str, bool], progress: bool):
    """:func:`_open_entry` of each group of ``data`` (with its array where it says so),
    computing those that must be first (together)."""
    entries = {source: _open_entry(dataset, source, frontend, d) for source, d in data.items()}
    missing = [source for source, entry in entries.items() if entry is None]
    if missing:
        _compute_groups(dataset, [(source, (frontend,)) for source in missing], progress, None)
        for source in missing:
            entries[source] = _open_entry(dataset, source, frontend, data[source])
            if entries[source] is None:
                raise NasAscError(
                    f"the feature cache {_cache_path(dataset, source, frontend)} could not be "
                    "read back after it was written; check the disk, then run the command again"
                )
    return entries


def _compute_groups(
    dataset, jobs: list[tuple[str, tuple[FrontEnd, ...]]], progress: bool, workers: int | None
) -> None:
    """Compute and cache each ``(clip group, front ends)`` of ``jobs``, with worker processes
    (started once for all of them) where they pay."""
    clips = sum(len(dataset.sources[source][1]) for source, _ in jobs)
    if workers is None:
        workers = _usable_cores() if clips >= _PARALLEL_MIN else 1
    with _Workers(min(workers, -(-clips // _TASK))) as pool:
        for source, frontends in jobs:
            _compute_group(dataset, source, frontends, progress, pool)


def _compute_group(
    dataset, source: str, frontends: tuple[FrontEnd, ...], progress: bool, workers: _Workers
) -> None:
    """Compute and cache the log-mels of clip group ``source`` for ``frontends``, one pass."""
    filenames = list(dataset.sources[source][1])
    paths = [_cache_path(dataset, source, fe) for fe in frontends]
    with contextlib.ExitStack() as stack:
        tmps = [
            stack.enter_context(
                atomic_array(
                    path, (len(filenames), fe.n_mels, fe.frames()), np.float16, keep_existing=True
                )
            )
            for path, fe in zip(paths, frontends, strict=True)
        ]
        stats, converted = _fill(dataset.root, filenames, frontends, tmps, progress, workers)
    # each array is in place with its checksum; its metadata last: an entry with metadata is whole
    for path, fe, (sums, m2) in zip(paths, frontends, stats, strict=True):
        meta = {
            "filenames": filenames,
            "frontend": fe.to_dict(),
            "sha256": recorded_checksum(path),
            "sums": torch.from_numpy(sums),
            "m2": torch.from_numpy(m2),
        }
        save_torch(meta, path.with_suffix(".pt"))
    if converted:
        # not an error: the clips are usable, but the user should know their data is unusual
        _LOG.warning(
            "note: converted clips that are not 1 s of 44.1 kHz mono as in TAU22: %s",
            ", ".join(_conversion(k, n, frontends) for k, n in sorted(converted.items())),
        )


def _open_split(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    array = load_array(path)  # None if absent or corrupt (deleted, warned)
    if array is None or (array.shape == shape and array.dtype == np.float16):
        return array
    _LOG.warning("feature cache %s does not match the dataset; recomputing it", path)
    discard(path)
    return None


def _write_split(group: np.ndarray, idx: np.ndarray, path: Path) -> np.ndarray:
    """Write the rows ``idx`` of the mapped ``group`` array as the array entry ``path``.

    The rows are read and written with plain file I/O, runs of consecutive rows at a time, so
    neither file is mapped here: this process holds no more than one batch of rows.
    """
    row = math.prod(group.shape[1:]) * group.itemsize
    shape = (len(idx), *group.shape[1:])
    with atomic_array(path, shape, np.float16, keep_existing=True) as tmp:
        out_offset = np.load(tmp, mmap_mode="r").offset
        with open(group.filename, "rb") as src, open(tmp, "r+b") as dst:
            for start in range(0, len(idx), _READ):
                rows = idx[start : start + _READ]
                breaks = np.flatnonzero(np.diff(rows) != 1) + 1
                parts = []
                for run in np.split(rows, breaks):
                    src.seek(group.offset + row * int(run[0]))
                    parts.append(src.read(row * len(run)))
                dst.seek(out_offset + row * start)
                dst.write(b"".join(parts))
    # just written and checksummed (or written by another process meanwhile): not read again
    return np.load(path, mmap_mode="c")


def _check_workers(workers) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise TypeError(f"workers must be a positive integer or None, got {workers!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers}")


def precompute_features(
    dataset, frontends: Iterable[FrontEnd], progress: bool = True, workers: int | None = None
) -> int:
    """Compute and cache the log-mels of several front ends, one pass over the audio per group.

    For each clip group the dataset reads (its training split and its test fold, or only the
    training split for a search view), the front ends whose cache entry is missing (or corrupt)
    are computed together: each clip is read once, resampled once per sample rate, transformed
    by the STFT once per STFT setting, and every front end's Mel filterbank is applied to that
    spectrogram. The files of the dataset's own splits are written too (a view's training part
    and validation split, :func:`load_features`), so that processes started next (search
    workers) find everything cached and only map it, sharing one copy. The values are those
    that :func:`load_features` computes for one front end, bit for bit.

    Args:
        dataset: A TAU22 dataset or view (:func:`nas_asc.data.tau22.load_tau22`).
        frontends: The front ends, e.g. every Mel-bin count of a search space.
        progress: Show a progress bar (clips, rate and ETA) per group computed.
        workers: Processes that read and transform the audio (spawned, one torch thread each,
            each writing its clips into the memory-mapped outputs, started once for all the
            groups); ``None`` uses every usable core for at least 8,192 clips in all and this
            process (its torch threads) for fewer, where starting the workers costs more than
            they save.

    Returns:
        The number of (clip group, front end) entries computed; 0 when all were cached.

    Raises:
        TypeError, ValueError: ``frontends`` holds something else than front ends, or
            ``workers`` is not a positive integer or None.
        DatasetError: a clip cannot be read.

    Example:
        >>> precompute_features(view, [FrontEnd(n_mels=n) for n in (64, 128)])  # doctest: +SKIP
    """
    _check_workers(workers)
    frontends = tuple(frontends)
    for fe in frontends:
        if not isinstance(fe, FrontEnd):
            raise TypeError(f"frontends must hold FrontEnd instances, got {type(fe).__name__}")
    frontends = tuple(dict.fromkeys(frontends))
    jobs = []
    for source in dict.fromkeys((dataset.train_source, dataset.evaluate_source)):
        missing = tuple(fe for fe in frontends if _open_entry(dataset, source, fe, True) is None)
        if missing:
            jobs.append((source, missing))
    if jobs:
        _compute_groups(dataset, jobs, progress, workers)
    for fe in frontends:  # a view's split files too: the processes started next only map them
        load_features(dataset, fe, progress=False)
    return sum(len(missing) for _, missing in jobs)


def load_features(
    dataset, frontend: FrontEnd, progress: bool = True
) -> tuple[FeatureSet, FeatureSet]:
    """Train and evaluate :class:`FeatureSet` of a TAU22 dataset or view for ``frontend``.

    Log-mels are computed and cached per clip group (the training split, the test fold), and
    only the groups the dataset's frames come from are read: a search view (training part and
    validation split, :mod:`nas_asc.data.protocol`) never opens a clip of the test fold.
    Each set's ``raw`` is a read-only memory map of a cache file, never a private copy: the
    processes of one machine that load the same features share one copy in memory. A frame
    that is not its whole group in order (a view's training part or validation split) gets a
    cache file of its own rows, written once from the group's. Features are normalized by the
    mean and standard deviation of the ``train`` frame (one scalar each, computed in float64
    from per-clip sums and rounded to float32), which the deployed front end applies as well.
    """
    frames = ((dataset.train, dataset.train_source), (dataset.evaluate, dataset.evaluate_source))
    shape = (frontend.n_mels, frontend.frames())
    plans = []  # per frame: its clip names, group, array file, mapped rows (None: to write)
    for frame, source in frames:
        names = list(frame.filename)
        group = _cache_path(dataset, source, frontend)
        if names == list(dataset.sources[source][1]):
            plans.append((names, source, group, None))
        else:
            path = _split_path(group, names)
            plans.append((names, source, path, _open_split(path, (len(names), *shape))))
    data: dict[str, bool] = {}  # the groups read, and whether their arrays are (not only stats)
    for _, source, _, array in plans:
        data[source] = data.get(source, False) or array is None
    entries = _entries(dataset, frontend, data, progress)
    index = {s: {name: i for i, name in enumerate(e.filenames)} for s, e in entries.items()}
    sets = []
    for (frame, _), (names, source, path, array) in zip(frames, plans, strict=True):
        entry = entries[source]
        idx = np.fromiter((index[source][name] for name in names), np.int64, len(names))
        if not sets:  # the training frame: its normalization
            mean, std = entry.moments(idx, math.prod(shape))
            if not math.isfinite(std) or std == 0.0:
                raise ValueError(
                    "training features have zero or non-finite variance; is the audio silent?"
                )
            mean, std = float(np.float32(mean)), float(np.float32(std))  # as float32 math uses
        if array is None:
            array = entry.array if path == entry.path else _write_split(entry.array, idx, path)
        sets.append(
            FeatureSet(
                raw=torch.from_numpy(array),
                y=torch.tensor(frame.label.to_numpy(), dtype=torch.long),
                devices=list(frame.device),
                filenames=names,
                rows=torch.tensor(frame.row.to_numpy(), dtype=torch.long),
                mean=mean,
                std=std,
            )
        )
    return sets[0], sets[1]
