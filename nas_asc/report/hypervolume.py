"""Hypervolume of a study's front, normalized to its budget: the one definition in nas-asc.

The three objectives live on very different scales (accuracy in [0, 1], MACs in millions, bytes in
hundreds of thousands), so they are normalized before the hypervolume is taken:

* accuracy stays a fraction, with the reference at chance level (1 / classes = 0.1);
* MACs and parameter bytes are divided by the budget's limits, with the reference at 1 (the
  budget itself).

The reference point is therefore *(chance accuracy, the MAC budget, the parameter budget)*, and
the hypervolume is the volume of the (accuracy gain over chance) x (fraction of the MAC budget
saved) x (fraction of the parameter budget saved) region that the front dominates. It lies in
``[0, 0.9]``: 0.9 would be a perfect classifier with no MACs and no parameters. Only feasible
trials count (as in Optuna's ``plot_hypervolume_history``), so infeasible, failed and pruned
trials never add to it. The report's history, its final figure and the DCASE 2025 package's
choice of submissions all call :func:`hypervolume`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.study.front import compute_hypervolume
from nas_asc.study.record import StudyRecord

__all__ = [
    "CHANCE_ACCURACY",
    "ReferencePoint",
    "hypervolume",
    "hypervolume_history",
    "loss_point",
    "reference_loss",
    "reference_point",
]

CHANCE_ACCURACY = 0.1  # ten scenes


@dataclass(frozen=True)
class ReferencePoint:
    """The point the hypervolume is measured from, in raw objective units."""

    accuracy: float  # chance level
    max_macs: float  # the budget's MAC limit
    max_param_bytes: float  # the budget's parameter-memory limit

    def describe(self) -> str:
        return (
            f"accuracy {self.accuracy:.0%} (chance), {self.max_macs / 1e6:g} M MACs and "
            f"{self.max_param_bytes:,.0f} parameter bytes (the budget); MACs and bytes are "
            "divided by these limits, so the hypervolume is at most 0.9"
        )


def reference_point(study: optuna.Study) -> ReferencePoint:
    """The reference point of ``study``: chance accuracy and the budget it was searched under."""
    budget = StudyRecord.of(study).budget or {}
    macs = budget.get("max_macs") or DEFAULT_BUDGET.max_macs
    nbytes = budget.get("max_param_bytes") or DEFAULT_BUDGET.max_param_bytes
    return ReferencePoint(CHANCE_ACCURACY, float(macs), float(nbytes))


def loss_point(values: Sequence[float], ref: ReferencePoint) -> np.ndarray:
    """One trial's normalized losses ``(-accuracy, MACs / limit, bytes / limit)`` from its first
    three objective values (a fourth, peak RAM, has no budget reference and is left out)."""
    accuracy, macs, nbytes = values[:3]
    return np.array([-accuracy, macs / ref.max_macs, nbytes / ref.max_param_bytes], dtype=float)


def reference_loss(ref: ReferencePoint) -> np.ndarray:
    """The reference point in loss space: ``(-chance, 1, 1)``."""
    return np.array([-ref.accuracy, 1.0, 1.0])


def hypervolume(points: Sequence[np.ndarray], ref: ReferencePoint) -> float:
    """The normalized hypervolume that ``points`` (:func:`loss_point` vectors) dominate.

    Points not strictly better than the reference in every objective add nothing and are left
    out; the volume itself is Optuna's exact computation
    (:func:`nas_asc.study.front.compute_hypervolume`), the one used everywhere in nas-asc.
    """
    reference = reference_loss(ref)
    inside = [p for p in points if np.all(np.isfinite(p)) and np.all(p < reference)]
    if not inside:
        return 0.0
    return compute_hypervolume(np.stack(inside), reference)


def hypervolume_history(study: optuna.Study) -> pd.DataFrame:
    """Normalized hypervolume after each complete trial, in trial order.

    Args:
        study: A study with objectives ``(int8_accuracy, macs, param_bytes)`` (first; the
            optional fourth, peak activation RAM, is left out: it has no reference point unless
            the budget limits it, and the hypervolumes of all studies stay comparable).

    Returns:
        Columns ``trial`` and ``hypervolume`` (one row per complete trial; empty if none). A
        trial with a positive constraint (over budget) adds nothing, as in Optuna's
        ``plot_hypervolume_history``.
    """
    ref = reference_point(study)
    numbers: list[int] = []
    history: list[float] = []
    points: list[np.ndarray] = []
    current = 0.0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is None or len(t.values) < 3:
            continue
        numbers.append(t.number)
        constraints = t.constraints or {}  # {name: value}; positive is over budget
        values = constraints.values() if isinstance(constraints, Mapping) else constraints
        feasible = not any(c > 0.0 for c in values)
        if feasible:
            point = loss_point(t.values, ref)
            if not any(np.all(p <= point) for p in points):  # not dominated: the volume grows
                points = [p for p in points if not np.all(point <= p)] + [point]
                current = hypervolume(points, ref)
        history.append(current)
    return pd.DataFrame({"trial": pd.Series(numbers, dtype="int64"), "hypervolume": history})
