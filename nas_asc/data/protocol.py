"""The evaluation protocol: search on a validation split, measure the test fold once, at the end.

A search decides many things from held-out accuracy: the accuracy objective, early stopping,
and so the Pareto front. If those decisions read the test fold (``fold1_evaluate``), the front's
accuracies are biased upwards by the selection itself. nas-asc therefore carves a **validation
split** out of the training split the search uses and splits it as the official train/test
split is made, **by recording location**:

* every location (``identifier``, ``city-location``) is on one side only, so validation clips
  are of places the network never heard, as test clips are;
* the split is stratified by scene: each scene's locations are shuffled and ``fraction`` of them
  (rounded, at least one, never all) go to validation, so every scene has locations on both
  sides. A scene with fewer than two training locations cannot be split and is an error naming
  it;
* the devices of the training data appear in validation too: of the draws ``0, 1, 2, ...`` the
  first whose validation and training parts each hold every training device is taken;
* it is a function of the training split's metadata (locations, scenes, devices) and the study
  seed only, so nothing about the test clips can move it.

A user may bring the validation split instead (:func:`read_validation_file`): a TAB-separated
file with a ``filename`` column (the DCASE fold-file format), naming clips of the training split
only.

:class:`Protocol` holds the three parts and hands out *views* of the dataset
(:meth:`~nas_asc.data.tau22.TAU22.view`) for each stage: the **search view** (train: the
training part, evaluate: the validation split) holds no clip of the test fold at all, so no
stage of a search (objectives, early stopping, normalization, teacher, calibration, device
simulation) can read it; the **test view** (train: the same training part, so the same feature
normalization and calibration clips; evaluate: the test fold) measures the search's models once,
at the end; the **final view** (the whole training split, the test fold) is what ``nas-asc
evaluate`` retrains on.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nas_asc._cache import content_key
from nas_asc.data.tau22 import SCENES, TAU22
from nas_asc.errors import DatasetError, NasAscError

__all__ = [
    "DEFAULT_VALIDATION",
    "Protocol",
    "ValidationSpec",
    "carve_validation",
    "make_protocol",
    "protocol_from_record",
    "read_validation_file",
]

DEFAULT_VALIDATION = 0.2  # fraction of each scene's training locations held out for validation
_DRAWS = 100  # shuffles tried for one that puts every training device on both sides


@dataclass(frozen=True)
class ValidationSpec:
    """How the validation split is made: carved (``fraction`` of the training locations, drawn
    with ``seed``) or read from a user's ``file``."""

    fraction: float = DEFAULT_VALIDATION
    seed: int = 0
    file: str | None = None

    def __post_init__(self) -> None:
        if self.file is None:
            ok = isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool)
            if not ok or not 0.0 < float(self.fraction) < 1.0:
                raise NasAscError(
                    f"--validation must be a fraction of the training locations in (0, 1), got "
                    f"{self.fraction!r}; e.g. --validation 0.2"
                )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise NasAscError(
                f"--seed must be an integer >= 0 (it seeds the validation split and every "
                f"trial), got {self.seed!r}"
            )


def _location_scenes(train: pd.DataFrame) -> pd.Series:
    """Each training location's scene (its most frequent one; ties: the first in SCENES)."""
    counts = train.groupby(["identifier", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["identifier", "n", "label"], ascending=[True, False, True])
    first = counts.drop_duplicates("identifier")
    return pd.Series(first["label"].to_numpy(), index=first["identifier"].to_numpy())


def carve_validation(
    train: pd.DataFrame, fraction: float, seed: int, what: str = "the training split"
) -> np.ndarray:
    """Which clips of ``train`` form the validation split (a boolean mask, row-aligned).

    By location, stratified by scene, every training device on both sides; see the module
    docstring. Deterministic in ``train``'s metadata (identifier, scene, device), ``fraction``
    and ``seed``.

    Raises:
        DatasetError: a scene has fewer than two training locations, or no draw puts every
            training device on both sides.
    """
    ValidationSpec(fraction=fraction, seed=seed)
    scene_of = _location_scenes(train)
    by_scene: list[tuple[int, list[str]]] = []
    for label, scene in enumerate(SCENES):
        locations = sorted(scene_of.index[scene_of.to_numpy() == label])
        if not locations:
            continue
        if len(locations) < 2:
            raise DatasetError(
                f"scene {scene!r} has {len(locations)} recording location in {what} "
                f"({locations[0]}); a validation split by location needs at least 2 per scene: "
                "use a larger --train-split or pass --validation-split FILE"
            )
        by_scene.append((label, locations))
    identifiers = train["identifier"].to_numpy()
    devices = np.asarray(train["device"].to_numpy(), dtype=object)
    wanted = sorted(set(devices))
    missing: dict[str, int] = {}
    for draw in range(_DRAWS):
        chosen: list[str] = []
        for label, locations in by_scene:
            n = len(locations)
            k = min(n - 1, max(1, math.floor(fraction * n + 0.5)))
            rng = np.random.default_rng([seed, draw, label])
            chosen += [locations[i] for i in sorted(rng.choice(n, size=k, replace=False))]
        mask = np.isin(identifiers, chosen)
        absent = [d for d in wanted if not ((devices == d) & mask).any()]
        absent += [d for d in wanted if not ((devices == d) & ~mask).any()]
        if not absent:
            return mask
        for d in absent:
            missing[d] = missing.get(d, 0) + 1
    device = max(missing, key=missing.get)
    n_locations = len(set(identifiers[devices == device]))
    raise DatasetError(
        f"no validation split of {fraction:g} of the locations in {what} puts device "
        f"{device!r} on both sides in {_DRAWS} draws (its clips come from {n_locations} "
        "location(s)); change --validation or pass --validation-split FILE"
    )


def read_validation_file(path: str | Path, dataset: TAU22, what: str) -> np.ndarray:
    """The validation split a user brings: a mask over ``dataset.train``.

    ``path`` is a TAB-separated file with a ``filename`` column (``audio/x.wav``, as in the
    DCASE fold files; a ``scene_label`` column, if present, must agree with meta.csv).

    Raises:
        DatasetError: the file is missing or malformed, names clips of the test fold or clips
            outside the training split, or leaves a scene without clips on one side.
    """
    from nas_asc.data.tau22 import read_tsv

    path = Path(path).expanduser()
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "missing"
        raise DatasetError(
            f"validation split file {path} is {kind}; pass a TAB-separated file with a "
            "filename column naming training clips"
        )
    frame = read_tsv(path, ("filename",), "validation split file")
    names = frame["filename"]
    if names.empty:
        raise DatasetError(f"validation split file {path} names no clips; list training clips")
    dup = names[names.duplicated()]
    if len(dup):
        raise DatasetError(
            f"validation split file {path} lists {dup.iloc[0]!r} more than once; keep one row "
            "per clip"
        )
    test = names[names.isin(set(dataset.evaluate.filename))]
    if len(test):
        raise DatasetError(
            f"validation split file {path} names {len(test)} clip(s) of the test fold "
            f"(fold1_evaluate), first {test.iloc[0]!r}; the test fold is only measured at the "
            f"end: validate on clips of {what}"
        )
    outside = names[~names.isin(set(dataset.train.filename))]
    if len(outside):
        raise DatasetError(
            f"validation split file {path} names {len(outside)} clip(s) outside {what}, first "
            f"{outside.iloc[0]!r}; validation clips must come from the training split"
        )
    mask = dataset.train["filename"].isin(set(names)).to_numpy()
    if "scene_label" in frame.columns:
        labels = dict(zip(frame["filename"], frame["scene_label"], strict=True))
        rows = dataset.train[mask]
        wrong = rows[rows["scene_label"] != rows["filename"].map(labels)]
        if len(wrong):
            raise DatasetError(
                f"validation split file {path} labels {wrong['filename'].iloc[0]!r} as "
                f"{labels[wrong['filename'].iloc[0]]!r} but meta.csv says "
                f"{wrong['scene_label'].iloc[0]!r}; use the labels of the dataset release"
            )
    _check_both_sides(dataset.train, mask, f"validation split file {path}")
    return mask


def _check_both_sides(train: pd.DataFrame, mask: np.ndarray, what: str) -> None:
    """Every scene of the training split keeps clips in validation and in training."""
    scenes = set(train["scene_label"])
    for side, keep in (("training", ~mask), ("validation", mask)):
        present = set(train.loc[keep, "scene_label"])
        for scene in SCENES:
            if scene in scenes and scene not in present:
                raise DatasetError(
                    f"{what} leaves scene {scene!r} without clips on the {side} side; every "
                    "scene needs clips on both sides"
                )


@dataclass(frozen=True, eq=False)
class Protocol:
    """A dataset split three ways: training part, validation split, test fold.

    Attributes:
        dataset: the loaded dataset (its ``train`` is the whole training split, its
            ``evaluate`` the test fold).
        validation_mask: which rows of ``dataset.train`` are the validation split.
        spec: how the split was made.
        train_split: the training split's name (``fold1``, ``split25``, ...).
    """

    dataset: TAU22
    validation_mask: np.ndarray
    spec: ValidationSpec
    train_split: str = "fold1"

    @property
    def fit(self) -> pd.DataFrame:
        """The clips a search trains on: the training split without the validation split."""
        return self.dataset.train[~self.validation_mask]

    @property
    def validation(self) -> pd.DataFrame:
        return self.dataset.train[self.validation_mask]

    @property
    def test(self) -> pd.DataFrame:
        return self.dataset.evaluate

    @cached_property
    def _split_key(self) -> str:
        """Content hash of the validation clips' names: what identifies the split."""
        names = "\n".join(sorted(self.validation["filename"]))
        return hashlib.sha256(names.encode()).hexdigest()[:16]

    def search_view(self) -> TAU22:
        """Train: the training part; evaluate: the validation split. No test clip in it."""
        key = content_key(
            "search", self.dataset.sources["train"][0], self.train_split, self._split_key
        )
        return self.dataset.view(self.fit, self.validation, "train", "search", key)

    def test_view(self) -> TAU22:
        """Train: the training part (the same normalization and calibration clips as the
        search); evaluate: the test fold."""
        key = content_key("test", self.dataset.fingerprint, self._split_key)
        return self.dataset.view(self.fit, self.test, "evaluate", "test", key)

    def final_view(self) -> TAU22:
        """The whole training split (training part and validation) and the test fold."""
        return self.dataset

    def to_dict(self) -> dict:
        """What a study records; :meth:`identity` is what must match to continue it."""
        fit, val = self.fit, self.validation
        return {
            **self.identity(),
            **({"validation_file": self.spec.file} if self.spec.file is not None else {}),
            "fit_clips": len(fit),
            "validation_clips": len(val),
            "test_clips": len(self.test),
            "fit_locations": int(fit["identifier"].nunique()),
            "validation_locations": int(val["identifier"].nunique()),
            "validation_devices": sorted(set(val["device"])),
        }

    def identity(self) -> dict:
        out: dict = {"train_split": self.train_split, "validation_split": self._split_key}
        if self.spec.file is not None:
            out["validation"] = "file"
        else:
            out["validation"] = "locations"
            out["validation_fraction"] = float(self.spec.fraction)
            out["validation_seed"] = self.spec.seed
        return out

    def describe(self) -> str:
        val = self.validation
        how = (
            f"from {self.spec.file}"
            if self.spec.file is not None
            else f"{self.spec.fraction:g} of the training locations, seed {self.spec.seed}"
        )
        return (
            f"validation: {len(val):,} clips of {val['identifier'].nunique()} locations "
            f"({how}); training: {len(self.fit):,} clips; test fold: {len(self.test):,} clips, "
            "measured once after the search"
        )


def make_protocol(dataset: TAU22, spec: ValidationSpec, train_split: str = "fold1") -> Protocol:
    """Carve (or read) the validation split of ``dataset``'s training split."""
    what = f"training split {train_split}"
    if spec.file is not None:
        mask = read_validation_file(spec.file, dataset, what)
        file = str(Path(spec.file).expanduser().resolve())
        spec = ValidationSpec(fraction=spec.fraction, seed=spec.seed, file=file)
    else:
        mask = carve_validation(dataset.train, spec.fraction, spec.seed, what)
    return Protocol(dataset, mask, spec, train_split)


def protocol_from_record(dataset: TAU22, record: dict) -> Protocol:
    """The protocol a study recorded (:meth:`Protocol.to_dict`), rebuilt on ``dataset``.

    Raises:
        NasAscError: the record is incomplete, or the rebuilt validation split differs from
            the recorded one (another dataset, or a validation file that changed).
    """
    try:
        if record["validation"] == "file":
            spec = ValidationSpec(seed=0, file=record["validation_file"])
        else:
            spec = ValidationSpec(record["validation_fraction"], record["validation_seed"])
        train_split = record["train_split"]
        expected = record["validation_split"]
    except (KeyError, TypeError) as exc:
        raise NasAscError(
            f"the study's protocol record lacks {exc}; it was written by another nas-asc"
        ) from None
    protocol = make_protocol(dataset, spec, train_split)
    if protocol.identity()["validation_split"] != expected:
        raise NasAscError(
            f"the validation split rebuilt from the study's record ({protocol.describe()}) is "
            "not the one the study was searched on; use the dataset and validation file of the "
            "search"
        )
    return protocol
