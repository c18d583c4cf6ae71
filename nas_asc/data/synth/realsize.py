"""A TAU22 layout of the real dataset's size whose clips are links to the clips of a smaller
dataset (:func:`realsize_layout`): it measures what the data pipeline does at the real size."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nas_asc._cache import atomic_dir
from nas_asc.data.synth.config import TAU_CITIES
from nas_asc.data.synth.layout import SPLIT_PERCENTS, default_dataset, write_tsv
from nas_asc.data.tau22 import DEVICES, SCENES, parse_filename
from nas_asc.errors import DatasetError

# 10-second segments per device of the TAU Urban Acoustic Scenes 2020 Mobile development set,
# which TAU22 cuts into ten 1-second clips each: fold1 train, fold1 evaluate, and the recordings
# that meta.csv lists in neither fold
_REAL_SEGMENTS = {
    "train": {"a": 10215, "b": 749, "c": 748, "s1": 750, "s2": 750, "s3": 750},
    "evaluate": {d: 329 if d in ("b", "c") else 330 for d in DEVICES},
    "unused": {"a": 3855, "s4": 750, "s5": 750, "s6": 750},
}
_REAL_LOCATION_BASE = {"train": 0, "evaluate": 500, "unused": 700}  # disjoint location ids


def realsize_plan(fraction: float) -> dict[str, list[tuple[str, str, str, str, int]]]:
    """Rows ``(filename, scene, identifier, device, segment number)`` of each part ("train",
    "evaluate", "unused") of a TAU22 layout of ``fraction`` times the real size."""
    parts = {}
    for part, per_device in _REAL_SEGMENTS.items():
        counts = {d: max(1, math.floor(n * fraction + 0.5)) for d, n in per_device.items()}
        n_segments = max(counts.values())
        rows = []
        for k in range(n_segments):  # device recordings run parallel to the first segments
            s, j = k % len(SCENES), k // len(SCENES)
            city = TAU_CITIES[j % len(TAU_CITIES)]
            m = j // len(TAU_CITIES)  # this (scene, city)'s m-th segment, ten per location
            location = 1000 * s + _REAL_LOCATION_BASE[part] + m // 10
            for device, count in counts.items():
                if k >= count:
                    continue
                for index in range(10):
                    name = f"audio/{SCENES[s]}-{city}-{location}-{m}-{index}-{device}.wav"
                    rows.append((name, SCENES[s], f"{city}-{location}", device, k))
        parts[part] = rows
    return parts


def realsize_layout(
    out: str | Path,
    source: str | Path | None = None,
    *,
    fraction: float = 1.0,
    link: str = "hard",
    progress: bool = True,
) -> Path:
    """Build a TAU22 layout of the real dataset's size whose clips are links to a few others.

    The layout has the real development set's metadata sizes: 230,350 rows in ``meta.csv``,
    139,620 clips in ``fold1_train.csv`` (devices a, b, c, s1-s3) and 29,680 in
    ``fold1_evaluate.csv`` and ``fold1_test.csv`` (all nine devices), 61,050 clips listed in
    neither fold, as ten 1-second clips of each 10-second segment with parallel recordings on
    the other devices, names ``audio/<scene>-<city>-<location>-<segment>-<index>-<device>.wav``,
    ten cities, disjoint training and evaluation locations, and nested ``split_setup`` subsets
    (``split5`` ... ``split100``, whole segments, drawn per scene). Every clip of ``meta.csv`` is
    a link to a clip of ``source`` of the same scene and device where it has one, so the layout
    costs inodes, not audio: it measures what the data pipeline does at the real size (reading,
    features, memory), not what a model learns from it.

    Args:
        out: Output folder; must not exist or be empty. It appears only once complete.
        source: A TAU22 dataset root whose ``audio/*.wav`` clips are linked to; ``None``: the
            embedded synthetic dataset (:func:`default_dataset`).
        fraction: Scale of every count, in ``(0, 1]`` (segments rounded, at least one per
            device and part): 1.0 is the real size, 0.1 a tenth of it.
        link: ``"hard"`` (``out`` on the file system of ``source``) or ``"symbolic"``.
        progress: Show a progress bar (files linked).

    Returns:
        ``out`` as a :class:`~pathlib.Path`; load it with
        :func:`~nas_asc.data.tau22.load_tau22`.

    Raises:
        DatasetError: ``out`` exists and is not an empty folder, ``source`` holds no clips, a
            link cannot be made, or ``fraction`` or ``link`` is invalid.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise DatasetError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise DatasetError(f"fraction must be in (0, 1], got {fraction}")
    if link not in ("hard", "symbolic"):
        raise DatasetError(f"link must be 'hard' or 'symbolic', got {link!r}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(
            f"layout target {out} exists and is not an empty folder; pass a new or empty folder"
        )
    source = default_dataset(progress) if source is None else Path(source).expanduser()
    pools = _source_clips(source)
    parts = realsize_plan(fraction)
    rows = sorted(row for part in parts.values() for row in part)
    if out.exists():
        out.rmdir()
    with atomic_dir(out) as tmp:
        (tmp / "audio").mkdir()
        used: dict[tuple[str, str], int] = {}
        bar = tqdm(total=len(rows), unit="file", desc="real-size layout", disable=not progress)
        try:
            for name, scene, _, device, _ in rows:
                pool = pools.get((scene, device)) or pools.get((scene, "")) or pools[("", "")]
                n = used.get((scene, device), 0)
                used[(scene, device)] = n + 1
                _link(pool[n % len(pool)], tmp / name, link)
                bar.update()
        finally:
            bar.close()
        _write_realsize_metadata(tmp, rows, parts)
    return out


def _source_clips(source: Path) -> dict[tuple[str, str], list[Path]]:
    """The clips of ``source/audio`` by (scene, device), by (scene, "") and all of them."""
    try:
        paths = sorted((source / "audio").glob("*.wav"))
    except OSError as exc:
        raise DatasetError(f"source dataset {source} cannot be read ({exc})") from exc
    pools: dict[tuple[str, str], list[Path]] = {}
    for path in paths:
        try:
            clip = parse_filename(path.name)
        except DatasetError:
            continue  # not a TAU22 name: not linked to
        pools.setdefault((clip.scene, clip.device), []).append(path.resolve())
        pools.setdefault((clip.scene, ""), []).append(path.resolve())
        pools.setdefault(("", ""), []).append(path.resolve())
    if not pools:
        raise DatasetError(
            f"source dataset {source} has no TAU22 clips in {source / 'audio'}; pass a dataset "
            "root (e.g. one made by nas-asc data synth)"
        )
    return pools


def _link(target: Path, name: Path, link: str) -> None:
    try:
        if link == "hard":
            os.link(target, name)
        else:
            os.symlink(target, name)
    except OSError as exc:
        fix = (
            "put the layout on the file system of the source dataset or use symbolic links"
            if link == "hard"
            else "check the folder's permissions"
        )
        raise DatasetError(
            f"cannot {link}-link {target} as {name} ({exc.strerror or exc}); {fix}"
        ) from exc


def _write_realsize_metadata(root: Path, rows: list[tuple], parts: dict[str, list[tuple]]) -> None:
    """meta.csv, the fold1 files and nested DCASE 2024 split files of a real-size layout."""
    write_tsv(
        root / "meta.csv",
        ("filename", "scene_label", "identifier", "source_label"),
        [(name, scene, identifier, device) for name, scene, identifier, device, _ in rows],
    )
    train, evaluate = sorted(parts["train"]), sorted(parts["evaluate"])
    setup = root / "evaluation_setup"
    write_tsv(setup / "fold1_train.csv", ("filename", "scene_label"), [r[:2] for r in train])
    write_tsv(setup / "fold1_evaluate.csv", ("filename", "scene_label"), [r[:2] for r in evaluate])
    write_tsv(setup / "fold1_test.csv", ("filename",), [r[:1] for r in evaluate])
    # whole training segments, in a fixed random order per scene: each split holds the smaller
    segments: dict[str, dict[int, None]] = {}
    for _, scene, _, _, k in train:
        segments.setdefault(scene, {})[k] = None
    rng = np.random.default_rng(0)
    ranked = {}
    for scene, ks in sorted(segments.items()):
        order = list(ks)
        ranked[scene] = [order[i] for i in rng.permutation(len(order))]
    for percent in SPLIT_PERCENTS:
        keep = {
            (scene, k)
            for scene, ks in ranked.items()
            for k in ks[: max(1, math.ceil(len(ks) * percent / 100.0))]
        }
        write_tsv(
            root / "split_setup" / f"split{percent}.csv",
            ("filename", "scene_label"),
            [r[:2] for r in train if (r[1], r[4]) in keep],
        )
