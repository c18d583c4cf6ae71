"""Loader for the TAU Urban Acoustic Scenes 2022 Mobile development layout (DCASE Task 1).

A dataset root holds::

    audio/<scene>-<city>-<location>-<segment>-<index>-<device>.wav   1 s, 44.1 kHz, 24-bit mono
    meta.csv                         filename, scene_label, identifier, source_label (TAB-separated)
    evaluation_setup/fold1_train.csv     filename, scene_label
    evaluation_setup/fold1_evaluate.csv  filename, scene_label
    evaluation_setup/fold1_test.csv      filename
    split_setup/split{5,10,25,50,100}.csv  DCASE 2024 training subsets (filename, scene_label)

:func:`load_tau22` reads the metadata of one training split plus the ``fold1`` evaluation split,
checks it thoroughly and returns a :class:`TAU22` with one row per clip. Every problem raises
:class:`~nas_asc.errors.DatasetError` with a one-line message naming the problem, the offending
path or value, and the fix. :func:`read_audio` reads one clip with ``soundfile``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile

from nas_asc._cache import file_digests
from nas_asc.errors import DatasetError

__all__ = [
    "DEVICES",
    "SAMPLE_RATE",
    "SCENES",
    "SEEN_DEVICES",
    "TAU22",
    "TRAIN_SPLITS",
    "UNSEEN_DEVICES",
    "ClipName",
    "load_tau22",
    "parse_filename",
    "read_audio",
    "read_tsv",
]

SCENES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)
DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
SEEN_DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3")
UNSEEN_DEVICES: tuple[str, ...] = ("s4", "s5", "s6")
SAMPLE_RATE = 44100

#: Valid ``train_split`` values of :func:`load_tau22`.
TRAIN_SPLITS: tuple[str, ...] = ("fold1", "split5", "split10", "split25", "split50", "split100")

_META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
_FOLD_COLUMNS = ("filename", "scene_label")
_SPLIT_DIRS = ("split_setup", "evaluation_setup", ".")
_SCENE_INDEX = {scene: i for i, scene in enumerate(SCENES)}


@dataclass(frozen=True)
class ClipName:
    """The fields of a TAU22 clip file name ``scene-city-location-segment-index-device.wav``.

    Attributes:
        scene: Scene label, one of :data:`SCENES`.
        city: Recording city, e.g. ``"lisbon"``.
        location: Location id within the city, e.g. ``"1000"``.
        segment: Id of the 10-second segment the clip was cut from, e.g. ``"40000"``.
        index: Position of the 1-second clip within its segment (0-9).
        device: Recording device, one of :data:`DEVICES`.
    """

    scene: str
    city: str
    location: str
    segment: str
    index: int
    device: str

    @property
    def identifier(self) -> str:
        """The location identifier ``city-location`` used to split train from evaluate."""
        return f"{self.city}-{self.location}"


def parse_filename(name: str) -> ClipName:
    """Parse a clip file name such as ``audio/airport-lisbon-1000-40000-0-a.wav``.

    Args:
        name: File name, with or without a leading folder (``audio/``).

    Returns:
        The parsed fields.

    Raises:
        DatasetError: The name does not have six dash-separated fields ending in ``.wav``, the
            index is not an integer, or the scene or device is unknown.
    """
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    if not base.endswith(".wav"):
        raise DatasetError(
            f"clip name {name!r} does not end in '.wav'; "
            "expected scene-city-location-segment-index-device.wav"
        )
    parts = base[: -len(".wav")].split("-")
    if len(parts) != 6:
        raise DatasetError(
            f"clip name {name!r} has {len(parts)} dash-separated fields; "
            "expected 6 as in scene-city-location-segment-index-device.wav"
        )
    if not all(parts):
        raise DatasetError(
            f"clip name {name!r} has an empty field; "
            "expected scene-city-location-segment-index-device.wav"
        )
    scene, city, location, segment, index, device = parts
    if scene not in _SCENE_INDEX:
        raise DatasetError(
            f"clip name {name!r} has unknown scene {scene!r}; "
            f"use one of {', '.join(SCENES)} (underscores, not dashes, inside a scene)"
        )
    if device not in DEVICES:
        raise DatasetError(
            f"clip name {name!r} has unknown device {device!r}; use one of {', '.join(DEVICES)}"
        )
    if not index.isdigit():
        raise DatasetError(
            f"clip name {name!r} has non-integer clip index {index!r}; "
            "the fifth field must be the clip's position in its segment (0-9)"
        )
    return ClipName(scene, city, location, segment, int(index), device)


@dataclass(frozen=True, eq=False)
class TAU22:
    """Metadata of a TAU22 dataset root: one training split and the ``fold1`` evaluation split.

    Both frames have the columns ``filename`` (relative to ``root``, e.g. ``audio/x.wav``),
    ``scene_label``, ``label`` (index into :data:`SCENES`), ``identifier`` (``city-location``),
    ``city``, ``device`` and ``row`` (the clip's row in meta.csv), with a fresh ``RangeIndex``.

    Attributes:
        root: Dataset root folder.
        train: Training clips.
        evaluate: Evaluation clips.
        fingerprint: 16-hex-digit content hash of the metadata and the referenced audio files'
            names and sizes; use it in cache keys.
        n_meta_rows: Number of rows of meta.csv. Both frames carry each clip's ``row`` in it,
            which indexes per-clip tensors such as teacher logits.
        sources: The clip groups whose audio this dataset reads, each with a content hash (of
            meta.csv, its fold file and its clips' names and sizes) and its sorted clip names:
            ``"train"`` (the training split) and ``"evaluate"`` (the test fold). Features are
            computed and cached per group (:func:`nas_asc.data.features.load_features`).
        train_source: The group the ``train`` frame's clips come from.
        evaluate_source: The group the ``evaluate`` frame's clips come from. A *view* made by
            :meth:`view` (see :mod:`nas_asc.data.protocol`) can hold a validation split carved
            from the training split as its ``evaluate`` frame: then both frames come from
            ``"train"`` and the view reads no clip of the test fold.
        role: ``"dataset"`` for what :func:`load_tau22` returns; a view's role (``"search"``:
            training part and validation split, ``"test"``: training part and test fold).
    """

    root: Path
    train: pd.DataFrame
    evaluate: pd.DataFrame
    fingerprint: str
    n_meta_rows: int = 0
    sources: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    train_source: str = "train"
    evaluate_source: str = "evaluate"
    role: str = "dataset"

    def path(self, filename: str) -> Path:
        """Return the absolute path of a clip given its ``filename`` column value."""
        return self.root / filename

    def view(
        self,
        train: pd.DataFrame,
        evaluate: pd.DataFrame,
        evaluate_source: str,
        role: str,
        fingerprint: str,
    ) -> TAU22:
        """A dataset of other train/evaluate frames over the same root and clip groups.

        ``train`` must hold clips of the training split, ``evaluate`` clips of the group
        ``evaluate_source``; ``fingerprint`` keys the view's caches (teacher logits, simulated
        devices) and must describe both frames.
        """
        for frame, source in ((train, self.train_source), (evaluate, evaluate_source)):
            names = set(self.sources[source][1]) if self.sources else None
            if names is not None and not set(frame.filename) <= names:
                raise ValueError(f"a {role} view must take its clips from the {source} group")
        return dataclasses.replace(
            self,
            train=train.reset_index(drop=True),
            evaluate=evaluate.reset_index(drop=True),
            evaluate_source=evaluate_source,
            role=role,
            fingerprint=fingerprint,
        )


def read_tsv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read a TAB-separated metadata file as strings and check its columns."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"{what} {path} cannot be parsed ({detail}); "
            "it must be a TAB-separated text file as in the TAU22 release"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(
            f"{what} {path} is empty; restore it from the dataset release "
            f"(header: {chr(9).join(required)})"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"{what} {path} cannot be read ({exc}); check its permissions") from exc
    columns = [str(c).strip() for c in frame.columns]
    frame.columns = columns
    missing = [c for c in required if c not in columns]
    if missing:
        if len(columns) == 1 and any(sep in columns[0] for sep in (",", ";", " ")):
            raise DatasetError(
                f"{what} {path} is not TAB-separated (header {columns[0]!r}); "
                f"separate the columns {', '.join(required)} with TAB characters"
            )
        raise DatasetError(
            f"{what} {path} lacks column(s) {', '.join(missing)} (it has {', '.join(columns)}); "
            f"required columns are {', '.join(required)}"
        )
    frame = frame[list(required)].copy()
    for column in required:
        frame[column] = frame[column].astype(str).str.strip()
    frame["filename"] = frame["filename"].str.replace("\\", "/", regex=False)
    return frame


def _find_split_file(root: Path, train_split: str) -> Path:
    """Locate the training split file for ``train_split``."""
    if train_split == "fold1":
        candidates = [root / "evaluation_setup" / "fold1_train.csv", root / "fold1_train.csv"]
    else:
        candidates = [root / d / f"{train_split}.csv" for d in _SPLIT_DIRS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in candidates)
    raise DatasetError(
        f"training split {train_split!r} not found (looked in {looked}); "
        "copy the split file from the DCASE release into split_setup/ or pick another train_split"
    )


def _find_evaluate_file(root: Path) -> Path:
    """Locate ``fold1_evaluate.csv``."""
    candidates = [root / "evaluation_setup" / "fold1_evaluate.csv", root / "fold1_evaluate.csv"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"evaluation split not found (looked in {', '.join(str(p) for p in candidates)}); "
        "restore evaluation_setup/fold1_evaluate.csv from the dataset release"
    )


def _inside_root(name: str) -> bool:
    """A meta.csv filename that stays below the root: relative, no ``..``, no drive."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ":" not in parts[0] and ".." not in parts


def _clip_name(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:77] + "...")


def _check_meta(meta: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate meta.csv rows and index them by filename."""
    if meta.empty:
        raise DatasetError(f"meta file {path} has no rows; restore it from the dataset release")
    bad = meta.loc[~meta["scene_label"].isin(SCENES), "scene_label"]
    if len(bad):
        raise DatasetError(
            f"meta file {path} has unknown scene label {bad.iloc[0]!r} "
            f"({len(bad)} row(s)); scene labels must be one of {', '.join(SCENES)}"
        )
    bad = meta.loc[~meta["source_label"].isin(DEVICES), "source_label"]
    if len(bad):
        raise DatasetError(
            f"meta file {path} has unknown source_label (device) {bad.iloc[0]!r} "
            f"({len(bad)} row(s)); devices must be one of {', '.join(DEVICES)}"
        )
    bad = meta.loc[~meta["identifier"].str.contains("-", regex=False), "identifier"]
    if len(bad):
        raise DatasetError(
            f"meta file {path} has identifier {bad.iloc[0]!r} without a dash; "
            "identifiers must be city-location, e.g. lisbon-1000"
        )
    outside = meta.loc[~meta["filename"].map(_inside_root), "filename"]
    if len(outside):
        raise DatasetError(
            f"meta file {path} names {_clip_name(outside.iloc[0])} outside the dataset root "
            f"({len(outside)} row(s)); filenames must be relative paths below it, e.g. "
            "audio/airport-lisbon-1000-40000-0-a.wav"
        )
    dup = meta.loc[meta["filename"].duplicated(), "filename"]
    if len(dup):
        raise DatasetError(
            f"meta file {path} lists {dup.iloc[0]!r} more than once ({len(dup)} duplicate(s)); "
            "keep one row per clip"
        )
    meta = meta.assign(row=np.arange(len(meta), dtype=np.int64))  # row in meta.csv
    return meta.set_index("filename", drop=False)


def _build_split(
    fold: pd.DataFrame, meta: pd.DataFrame, path: Path, root: Path, check_audio: bool
) -> pd.DataFrame:
    """Join a fold file with meta.csv and check labels and audio."""
    if fold.empty:
        raise DatasetError(f"split file {path} lists no clips; restore it from the dataset release")
    dup = fold.loc[fold["filename"].duplicated(), "filename"]
    if len(dup):
        raise DatasetError(
            f"split file {path} lists {dup.iloc[0]!r} more than once ({len(dup)} duplicate(s)); "
            "keep one row per clip"
        )
    bad = fold.loc[~fold["scene_label"].isin(SCENES), "scene_label"]
    if len(bad):
        raise DatasetError(
            f"split file {path} has unknown scene label {bad.iloc[0]!r} ({len(bad)} row(s)); "
            f"scene labels must be one of {', '.join(SCENES)}"
        )
    absent = fold.loc[~fold["filename"].isin(meta.index), "filename"]
    if len(absent):
        raise DatasetError(
            f"split file {path} names {len(absent)} clip(s) absent from meta.csv, first "
            f"{absent.iloc[0]!r}; use the meta.csv and split files of the same dataset release"
        )
    rows = meta.loc[fold["filename"].to_list()]
    mismatch = fold["scene_label"].to_numpy() != rows["scene_label"].to_numpy()
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise DatasetError(
            f"split file {path} labels {fold['filename'].iloc[i]!r} as "
            f"{fold['scene_label'].iloc[i]!r} but meta.csv says {rows['scene_label'].iloc[i]!r}; "
            "use the meta.csv and split files of the same dataset release"
        )
    if check_audio:
        missing = [f for f in fold["filename"] if not (root / f).is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} audio file(s) named by {path} are missing on disk, first "
                f"{root / missing[0]}; download/extract the audio into {root / 'audio'} "
                "or pass check_audio=False"
            )
    identifier = rows["identifier"].to_numpy(dtype=object)
    return pd.DataFrame(
        {
            "filename": fold["filename"].to_numpy(dtype=object),
            "scene_label": fold["scene_label"].to_numpy(dtype=object),
            "label": fold["scene_label"].map(_SCENE_INDEX).to_numpy(dtype=np.int64),
            "identifier": identifier,
            "city": np.array([s.split("-", 1)[0] for s in identifier], dtype=object),
            "device": rows["source_label"].to_numpy(dtype=object),
            "row": rows["row"].to_numpy(dtype=np.int64),
        }
    )


def _fingerprint(files: list[Path], filenames: list[str], digests: list[str]) -> str:
    """Hash metadata bytes and each referenced audio file's name, size and content digest."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for name, stamp in zip(filenames, digests, strict=True):
        digest.update(f"{name}\t{stamp}\n".encode())
    return digest.hexdigest()[:16]


def _group(
    frame: pd.DataFrame, digests: list[str], files: list[Path]
) -> tuple[str, tuple[str, ...]]:
    """A clip group's content hash (the metadata ``files`` that define it, its audio files'
    names, sizes and content digests in sorted order) and its sorted clip names."""
    pairs = sorted(zip(frame["filename"], digests, strict=True))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    digest.update("".join(f"{n}\t{s}\n" for n, s in pairs).encode())
    return digest.hexdigest()[:16], tuple(n for n, _ in pairs)


def load_tau22(root: str | Path, train_split: str = "fold1", check_audio: bool = True) -> TAU22:
    """Load and validate the metadata of a TAU22 dataset root.

    Args:
        root: Dataset root folder (holds ``meta.csv``, ``audio/`` and ``evaluation_setup/``).
        train_split: ``"fold1"`` for ``evaluation_setup/fold1_train.csv`` or one of
            ``"split5"``, ``"split10"``, ``"split25"``, ``"split50"``, ``"split100"`` for a
            DCASE 2024 training subset (looked for in ``split_setup/``, ``evaluation_setup/``
            and the root). Evaluation always uses ``fold1_evaluate.csv``.
        check_audio: Check that every audio file named by the splits exists.

    Returns:
        The dataset's train and evaluate tables and its fingerprint.

    Raises:
        DatasetError: The root, a metadata file or an audio file is missing or malformed.
    """
    if train_split not in TRAIN_SPLITS:
        raise DatasetError(
            f"unknown train_split {train_split!r}; use one of {', '.join(TRAIN_SPLITS)}"
        )
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(
            f"dataset root {root} does not exist; pass the folder that holds meta.csv and audio/"
        )
    if not root.is_dir():
        raise DatasetError(
            f"dataset root {root} is not a directory; "
            "pass the folder that holds meta.csv and audio/"
        )
    meta_path = root / "meta.csv"
    if not meta_path.is_file():
        raise DatasetError(
            f"meta file {meta_path} not found; pass the TAU22 root folder (the one with meta.csv)"
        )
    meta = _check_meta(read_tsv(meta_path, _META_COLUMNS, "meta file"), meta_path)
    train_path = _find_split_file(root, train_split)
    eval_path = _find_evaluate_file(root)
    train = _build_split(
        read_tsv(train_path, _FOLD_COLUMNS, "split file"), meta, train_path, root, check_audio
    )
    evaluate = _build_split(
        read_tsv(eval_path, _FOLD_COLUMNS, "split file"), meta, eval_path, root, check_audio
    )
    both = sorted(set(train["filename"]) & set(evaluate["filename"]))
    if both:
        raise DatasetError(
            f"{_clip_name(both[0])} is in both {train_path.name} and {eval_path.name} "
            f"({len(both)} clip(s)); the evaluated clips must be held out of training"
        )
    # each clip's size and content digest (cached by name, size and mtime): a clip replaced by
    # other audio of the same size gets new feature and teacher cache keys
    names = train["filename"].to_list() + evaluate["filename"].to_list()
    digests = file_digests(root, names)  # one pass over the index for both lists
    train_digests, eval_digests = digests[: len(train)], digests[len(train) :]
    fingerprint = _fingerprint([meta_path, train_path, eval_path], names, digests)
    return TAU22(
        root=root,
        train=train,
        evaluate=evaluate,
        fingerprint=fingerprint,
        n_meta_rows=len(meta),
        sources={
            "train": _group(train, train_digests, [meta_path, train_path]),
            "evaluate": _group(evaluate, eval_digests, [meta_path, eval_path]),
        },
    )


def read_audio(path: Path, notes: set[str] | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 mono samples with ``soundfile``.

    Args:
        path: Audio file (WAV, FLAC, ...).
        notes: If given, a short description of each departure from the TAU22 format that the
            caller should tell the user about (``"2 channels"``: averaged to mono) is added.

    Returns:
        ``(samples, sample_rate)``; multi-channel files are averaged to mono.

    Raises:
        DatasetError: The file is missing, unreadable, corrupt, empty or holds NaN or infinite
            samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"audio file {path} not found; check the dataset root and its audio/")
    if path.stat().st_size == 0:  # soundfile would only say "Format not recognised"
        raise DatasetError(
            f"audio file {path} is empty (0 bytes); re-download or regenerate it (an interrupted "
            "copy or extraction leaves such files)"
        )
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.SoundFileError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(
            f"audio file {path} cannot be decoded ({detail}); "
            "re-download or regenerate it (expected a WAV file)"
        ) from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise DatasetError(f"audio file {path} holds no samples; re-download or regenerate it")
    if not np.isfinite(data).all():  # float WAVs can hold them; every feature would be NaN
        bad = int(data.size - np.isfinite(data).sum())
        raise DatasetError(
            f"audio file {path} holds {bad} non-finite samples (NaN or infinity); re-download "
            "or regenerate it"
        )
    samples = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if notes is not None and data.shape[1] != 1:
        notes.add(f"{data.shape[1]} channels")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sample_rate)
