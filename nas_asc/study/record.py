"""What ``nas-asc search`` records in a study, written in one place and read back one way.

A study's own attributes (not its trials') are the search's settings: the space and its
definition, the budget, the seed, the data and its fingerprint, the validation protocol, the
artifact folder, the warm start, the family's revision, the sampler and pruner, and the search's
running time. :func:`write_search_settings` writes them when a worker joins the study
(:func:`nas_asc.search.study.prepare_study`, under the study's lock), :func:`add_search_time`
when a search ends, and every command reads them through :meth:`StudyRecord.of`, which is
tolerant: a study nas-asc did not make (or an older one) reads as ``None`` where a value is
missing or malformed, and :func:`require_budget` turns a missing budget into one clear error.

The attribute names are :data:`KEYS`, the stored format (plain JSON values), so that studies
written by earlier versions still open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from nas_asc.budget import Budget
from nas_asc.errors import NasAscError

__all__ = [
    "KEYS",
    "StudyRecord",
    "add_search_time",
    "recorded_budget",
    "require_budget",
    "write_search_settings",
]

#: the study attributes nas-asc writes, in the order a joining worker writes them ("space" is
#: written after the settings it completes: a study that records a space records them all)
KEYS = (
    "artifact_dir",
    "data_info",
    "protocol",
    "budget",
    "space_definition",
    "warm_start",
    "model_revision",
    "space",
    "data",
    "seed",
    "sampler",
    "pruner",
    "search_seconds",
    "search_runs",
)


def _mapping(value: Any) -> dict | None:
    return dict(value) if isinstance(value, Mapping) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


@dataclass(frozen=True)
class StudyRecord:
    """A study's recorded search settings, typed; ``None`` (or empty) where not recorded."""

    space: str | None = None  # the search space's name; written last of the settings
    space_definition: dict | None = None  # the space as searched (dimensions, fixed values)
    budget: dict | None = None  # Budget.to_dict() as recorded (see :attr:`limits`)
    seed: int | None = None  # the study seed every trial's seed derives from
    data: str | None = None  # the dataset's label (root and split), for people
    data_info: dict = field(default_factory=dict)  # root, split, fingerprint
    protocol: dict | None = None  # the validation protocol (None: searched before it existed)
    artifact_dir: str | None = None  # the folder of the study's checkpoints
    warm_start: dict | None = None  # what the first worker queued
    model_revision: int | None = None  # the family's revision the trials trained
    sampler: str | None = None
    pruner: str | None = None
    search_seconds: float = 0.0  # wall time of every search run of the study, summed
    search_runs: int = 0

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        """Read ``study``'s attributes; missing or malformed values read as not recorded."""
        attrs = study.user_attrs
        return cls(
            space=_text(attrs.get("space")),
            space_definition=_mapping(attrs.get("space_definition")),
            budget=_mapping(attrs.get("budget")),
            seed=_int(attrs.get("seed")),
            data=_text(attrs.get("data")),
            data_info=_mapping(attrs.get("data_info")) or {},
            protocol=_mapping(attrs.get("protocol")),
            artifact_dir=_text(attrs.get("artifact_dir")),
            warm_start=_mapping(attrs.get("warm_start")),
            model_revision=_int(attrs.get("model_revision")),
            sampler=_text(attrs.get("sampler")),
            pruner=_text(attrs.get("pruner")),
            search_seconds=_seconds(attrs.get("search_seconds")),
            search_runs=_int(attrs.get("search_runs")) or 0,
        )

    @property
    def settled(self) -> bool:
        """Whether a worker has recorded the settings (the space is written after them)."""
        return self.space is not None

    @property
    def limits(self) -> Budget | None:
        """The budget as a :class:`~nas_asc.budget.Budget`; None when none, or not one."""
        if self.budget is None:
            return None
        try:
            return Budget(**self.budget)
        except (TypeError, ValueError):  # BudgetError is a ValueError
            return None

    @property
    def family(self) -> str | None:
        """The model family of the searched space."""
        return _text((self.space_definition or {}).get("model"))

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the dataset the study searched on."""
        return _text(self.data_info.get("fingerprint"))


def write_search_settings(
    study: optuna.Study,
    *,
    budget: Budget,
    space_definition: dict,
    space: str,
    data: str,
    seed: int,
    sampler: str,
    pruner: str,
    model_revision: int | None,
    artifact_dir: str | None = None,
    data_info: dict | None = None,
    protocol: dict | None = None,
    warm_start: dict | None = None,
) -> None:
    """Record a joining worker's settings (under the study's lock; see :data:`KEYS` for the
    order). ``None`` (or empty ``data_info``) leaves the recorded value as it is."""
    optional = {"artifact_dir": artifact_dir, "data_info": data_info, "protocol": protocol}
    for key, value in optional.items():
        if value:
            study.set_user_attr(key, value)
    study.set_user_attr("budget", budget.to_dict())
    study.set_user_attr("space_definition", space_definition)
    if warm_start is not None:
        study.set_user_attr("warm_start", warm_start)
    study.set_user_attr("model_revision", model_revision)
    study.set_user_attr("space", space)
    study.set_user_attr("data", data)
    study.set_user_attr("seed", seed)
    study.set_user_attr("sampler", sampler)
    study.set_user_attr("pruner", pruner)


def add_search_time(study: optuna.Study, seconds: float) -> tuple[float, int]:
    """Add one search run of ``seconds`` to the study's record; returns (total seconds, runs)."""
    record = StudyRecord.of(study)
    total, runs = record.search_seconds + seconds, record.search_runs + 1
    study.set_user_attr("search_seconds", total)
    study.set_user_attr("search_runs", runs)
    return total, runs


def recorded_budget(study: optuna.Study) -> Budget | None:
    """The budget ``study`` was searched under; None when it records none or one that is not a
    budget (a study nas-asc did not make)."""
    return StudyRecord.of(study).limits


def require_budget(study: optuna.Study) -> Budget:
    """:func:`recorded_budget`, or a one-line ``NasAscError`` when the study records none."""
    budget = recorded_budget(study)
    if budget is None:
        raise NasAscError(
            f"study {study.study_name!r} records no budget; it was not run by nas-asc search"
        )
    return budget
