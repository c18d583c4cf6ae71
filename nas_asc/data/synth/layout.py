"""The synthetic dataset's TAU22 files: the clips planned and named, rendered to WAV files
(in worker processes for large datasets), the metadata and the manifest (:func:`generate`), and
the cached embedded dataset (:func:`default_dataset`)."""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from tqdm import tqdm

from nas_asc._cache import atomic_dir, cache_root, check_manifest, content_key, write_manifest
from nas_asc.data.synth.config import SYNTH_VERSION, SynthConfig
from nas_asc.data.synth.devices import DEVICE_INDEX, record
from nas_asc.data.synth.scenes import Clip, synth_clean
from nas_asc.data.tau22 import DEVICES, SAMPLE_RATE, SCENES
from nas_asc.errors import DatasetError

_LOG = logging.getLogger(__name__)

_TRAIN_EXTRA = ("b", "c", "s1", "s2", "s3")  # each records a parallel_fraction of training clips
#: The nested DCASE 2024 training subsets (``split_setup/split<percent>.csv``), in percent.
SPLIT_PERCENTS = (5, 10, 25, 50, 100)


# --------------------------------------------------------------------------------------------
# Rendering clips to files
# --------------------------------------------------------------------------------------------


def _render(config: SynthConfig, root: str, clip: Clip) -> int:
    """Synthesise one clip, record it on its devices and write the WAV files."""
    clean = synth_clean(config, clip)
    key = [config.seed, 4, clip.scene_idx, clip.city_idx, clip.loc, clip.segment, clip.index]
    reference: np.ndarray | None = None
    for device, name in zip(clip.devices, clip.names, strict=True):
        if device in ("a", "b", "c"):
            source = clean
        else:  # simulated from the device-a recording of the same clip
            if reference is None:
                rng_a = np.random.default_rng([*key, 0])
                reference = record(clean, "a", 1.0, rng_a, config.seed)[0]
            source = reference
        if device == "a":
            strength = 1.0
        elif device in ("s4", "s5", "s6"):
            strength = config.unseen_strength
        else:
            strength = config.device_strength
        rng = np.random.default_rng([*key, DEVICE_INDEX[device]])
        out, samples = record(source, device, strength, rng, config.seed)
        if device == "a":
            reference = out
        # encoded in memory, written by Python: a full disk is an OSError naming the file, not
        # libsndfile's "System error."
        wav = io.BytesIO()
        soundfile.write(
            wav, samples.astype(np.float32), SAMPLE_RATE, subtype="PCM_24", format="WAV"
        )
        path = os.path.join(root, name)
        try:
            with open(path, "wb") as fh:
                fh.write(wav.getbuffer())
        except OSError as exc:
            raise _ClipWriteError(exc.errno, exc.strerror or str(exc), path) from None
    return len(clip.devices)


class _ClipWriteError(OSError):
    """A clip could not be written (a full disk, a quota): the disk's fault, not the workers',
    so generation stops instead of starting over in one process."""


def _render_batch(config: SynthConfig, root: str, clips: list[Clip]) -> int:
    """Render a batch of clips (worker entry point)."""
    return sum(_render(config, root, clip) for clip in clips)


# --------------------------------------------------------------------------------------------
# Planning and writing
# --------------------------------------------------------------------------------------------


def _clip_name(scene: str, city: str, loc_id: int, segment: int, index: int, device: str) -> str:
    """The TAU22 file name of a clip."""
    return f"audio/{scene}-{city}-{loc_id}-{segment}-{index}-{device}.wav"


def _plan(config: SynthConfig) -> tuple[list[Clip], list[dict], list[dict]]:
    """Enumerate the clips; return (clips to render, train rows, evaluate rows)."""
    n_loc = config.train_locations + config.eval_locations
    train_a: list[tuple[Clip, np.ndarray]] = []
    eval_clips: list[Clip] = []
    for s, _scene in enumerate(SCENES):
        for c, _city in enumerate(config.cities):
            for k in range(n_loc):
                is_train = k < config.train_locations
                n_seg = config.train_segments if is_train else config.eval_segments
                per_seg = (
                    config.train_clips_per_segment if is_train else config.eval_clips_per_segment
                )
                for j in range(n_seg):
                    pick = np.random.default_rng([config.seed, 6, s, c, k, j])
                    for idx in sorted(int(i) for i in pick.choice(10, per_seg, replace=False)):
                        if is_train:
                            keys = np.random.default_rng([config.seed, 7, s, c, k, j, idx])
                            train_a.append((Clip(s, c, k, j, idx, ("a",)), keys.random(6)))
                        else:
                            eval_clips.append(Clip(s, c, k, j, idx, DEVICES))
    # Each extra training device records the same number of clips: those with the lowest keys.
    n_extra = round(config.parallel_fraction * len(train_a))
    if config.parallel_fraction > 0:
        n_extra = max(1, n_extra)
    chosen: dict[int, list[str]] = {}
    for d, device in enumerate(_TRAIN_EXTRA):
        order = np.argsort([keys[d] for _, keys in train_a], kind="stable")
        for i in order[:n_extra]:
            chosen.setdefault(int(i), []).append(device)
    segment_keys = {}
    clips: list[Clip] = []
    train_rows: list[dict] = []
    eval_rows: list[dict] = []
    for i, (clip, keys) in enumerate(train_a):
        devices = ("a", *[d for d in _TRAIN_EXTRA if d in chosen.get(i, [])])
        seg = (clip.scene_idx, clip.city_idx, clip.loc, clip.segment)
        segment_keys.setdefault(seg, float(keys[5]))
        named = _named(config, Clip(*seg[:3], clip.segment, clip.index, devices), n_loc)
        clips.append(named)
        for device, name in zip(named.devices, named.names, strict=True):
            train_rows.append(_row(config, named, device, name, n_loc, segment_keys[seg]))
    for clip in eval_clips:
        named = _named(config, clip, n_loc)
        clips.append(named)
        for device, name in zip(named.devices, named.names, strict=True):
            eval_rows.append(_row(config, named, device, name, n_loc, 0.0))
    return clips, train_rows, eval_rows


def _named(config: SynthConfig, clip: Clip, n_loc: int) -> Clip:
    """Attach output file names to a clip."""
    loc_id = clip.scene_idx * n_loc + clip.loc
    names = tuple(
        _clip_name(
            SCENES[clip.scene_idx],
            config.cities[clip.city_idx],
            loc_id,
            clip.segment,
            clip.index,
            device,
        )
        for device in clip.devices
    )
    return Clip(
        clip.scene_idx, clip.city_idx, clip.loc, clip.segment, clip.index, clip.devices, names
    )


def _row(config: SynthConfig, clip: Clip, device: str, name: str, n_loc: int, key: float) -> dict:
    """One metadata row."""
    city = config.cities[clip.city_idx]
    return {
        "filename": name,
        "scene_label": SCENES[clip.scene_idx],
        "identifier": f"{city}-{clip.scene_idx * n_loc + clip.loc}",
        "source_label": device,
        "key": key,
    }


def write_tsv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Write a TAB-separated file with ``\\n`` line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_metadata(
    root: Path, config: SynthConfig, train_rows: list[dict], eval_rows: list[dict]
) -> None:
    """Write meta.csv, the fold files, the DCASE 2024 split files and synth.json."""
    meta = sorted(train_rows + eval_rows, key=lambda r: r["filename"])
    write_tsv(
        root / "meta.csv",
        ("filename", "scene_label", "identifier", "source_label"),
        [(r["filename"], r["scene_label"], r["identifier"], r["source_label"]) for r in meta],
    )
    train = sorted(train_rows, key=lambda r: r["filename"])
    evaluate = sorted(eval_rows, key=lambda r: r["filename"])
    setup = root / "evaluation_setup"
    write_tsv(
        setup / "fold1_train.csv",
        ("filename", "scene_label"),
        [(r["filename"], r["scene_label"]) for r in train],
    )
    write_tsv(
        setup / "fold1_evaluate.csv",
        ("filename", "scene_label"),
        [(r["filename"], r["scene_label"]) for r in evaluate],
    )
    write_tsv(setup / "fold1_test.csv", ("filename",), [(r["filename"],) for r in evaluate])
    # Nested, scene-stratified subsets of the training split, drawn whole segment by segment.
    ranked = {
        scene: sorted(
            (r for r in train if r["scene_label"] == scene), key=lambda r: (r["key"], r["filename"])
        )
        for scene in SCENES
    }
    for percent in SPLIT_PERCENTS:
        subset = []
        for rows in ranked.values():
            subset.extend(rows[: max(1, math.ceil(len(rows) * percent / 100.0))])
        subset.sort(key=lambda r: r["filename"])
        write_tsv(
            root / "split_setup" / f"split{percent}.csv",
            ("filename", "scene_label"),
            [(r["filename"], r["scene_label"]) for r in subset],
        )
    info = {"version": SYNTH_VERSION, "config": asdict(config)}
    (root / "synth.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _batches(clips: list[Clip], size: int) -> Iterator[list[Clip]]:
    """Split the clip list into batches of ``size``."""
    for i in range(0, len(clips), size):
        yield clips[i : i + size]


def generate(
    out: str | Path,
    config: SynthConfig = SynthConfig(),  # noqa: B008 - frozen, so immutable
    progress: bool = True,
    *,
    workers: int | None = None,
) -> Path:
    """Generate the synthetic dataset in the TAU22 layout, atomically.

    Args:
        out: Output folder; must not exist or be empty. It appears only once complete.
        config: Size, seed and difficulty.
        progress: Show a tqdm progress bar (files written).
        workers: Worker processes; ``None`` picks the CPU count for large datasets and 1 for
            small ones. The output does not depend on it.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: ``out`` exists and is not an empty folder, or ``config`` is invalid.
    """
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise DatasetError(
                f"synthetic dataset target {out} exists and is not a folder; "
                "pass a new or empty folder"
            )
        if any(out.iterdir()):
            raise DatasetError(
                f"synthetic dataset target {out} is not empty; "
                "pass a new or empty folder (or delete it to regenerate)"
            )
        out.rmdir()
    clips, train_rows, eval_rows = _plan(config)
    total = sum(len(c.devices) for c in clips)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(clips) >= 400 else 1
    if not isinstance(workers, int) or workers < 1:
        raise DatasetError(f"workers={workers!r} is invalid; use an integer >= 1 or None")
    with atomic_dir(out) as tmp:
        (tmp / "audio").mkdir()
        bar = tqdm(
            total=total,
            unit="file",
            desc="generating the synthetic TAU22 dataset (once, then cached)",
            disable=not progress,
        )
        try:
            _render_all(config, tmp, clips, workers, bar)
        finally:
            bar.close()
        _write_metadata(tmp, config, train_rows, eval_rows)
        # written last: the manifest marks the folder complete and lets a later load check it
        write_manifest(tmp)
    return out


def _render_all(config: SynthConfig, root: Path, clips: list[Clip], workers: int, bar: Any) -> None:
    """Render every clip, in worker processes when ``workers > 1`` (serially if that fails)."""
    if workers > 1:
        try:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [
                    pool.submit(_render_batch, config, str(root), batch)
                    for batch in _batches(clips, 32)
                ]
                for future in concurrent.futures.as_completed(futures):
                    bar.update(future.result())
            return
        except _ClipWriteError:
            raise
        except (OSError, BrokenProcessPool) as exc:
            # Output does not depend on the worker count: redo everything in this process.
            _LOG.warning("worker processes failed (%s); generating in one process", exc)
            bar.reset()
    for batch in _batches(clips, 16):
        bar.update(_render_batch(config, str(root), batch))


def _remove(path: Path) -> None:
    """Delete a cache folder: renamed away first, so no one sees it half-deleted."""
    trash = path.with_name(f".{path.name}.{os.getpid()}.trash")
    try:
        os.replace(path, trash)
    except FileNotFoundError:  # another process removed it already
        return
    shutil.rmtree(trash, ignore_errors=True)


def default_dataset(
    progress: bool = True,
    config: SynthConfig = SynthConfig(),  # noqa: B008 - frozen, so immutable
) -> Path:
    """Return the cached synthetic dataset for ``config``, generating it on first use.

    The dataset lives in ``cache_root()/datasets/synth-<key>`` where the key hashes
    :data:`SYNTH_VERSION` and the config. A cached copy is checked against its manifest (every
    file present, at its recorded size) on each call; one that fails (half-generated by an older
    nas-asc, truncated or partly deleted) is removed with a one-line warning and generated again.

    Args:
        progress: Show a progress bar while generating.
        config: Size, seed and difficulty.

    Returns:
        The dataset root.
    """
    path = cache_root() / "datasets" / f"synth-{content_key(SYNTH_VERSION, asdict(config))}"
    if path.exists():
        problem = check_manifest(path)
        if problem is None:
            return path
        _LOG.warning("cached synthetic dataset %s %s; generating it again", path, problem)
        _remove(path)
    try:
        return generate(path, config, progress)
    except DatasetError:
        if (path / "meta.csv").is_file():  # another process finished it first
            return path
        raise
