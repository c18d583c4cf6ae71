"""Hypervolume of a study's front, normalized to its budget, computed by Optuna.

The three objectives live on very different scales (accuracy in [0, 1], MACs in millions, bytes in
hundreds of thousands), so they are normalized before the hypervolume is taken:

* accuracy stays a fraction, with the reference at chance level (1 / classes = 0.1);
* MACs and parameter bytes are divided by the budget's limits, with the reference at 1 (the
  budget itself).

The reference point is therefore *(chance accuracy, the MAC budget, the parameter budget)*, and
the hypervolume is the volume of the (accuracy gain over chance) x (fraction of the MAC budget
saved) x (fraction of the parameter budget saved) region that the front dominates. It lies in
``[0, 0.9]``: 0.9 would be a perfect classifier with no MACs and no parameters. Only feasible
trials count (Optuna's ``plot_hypervolume_history`` skips trials with positive constraints), so
infeasible, failed and pruned trials never add to it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import optuna
import pandas as pd
from optuna.trial import TrialState, create_trial

from nas_asc.budget import DEFAULT_BUDGET

__all__ = ["CHANCE_ACCURACY", "ReferencePoint", "reference_point", "hypervolume_history"]

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
    raw = study.user_attrs.get("budget")
    budget = raw if isinstance(raw, Mapping) else {}
    macs = budget.get("max_macs") or DEFAULT_BUDGET.max_macs
    nbytes = budget.get("max_param_bytes") or DEFAULT_BUDGET.max_param_bytes
    return ReferencePoint(CHANCE_ACCURACY, float(macs), float(nbytes))


def hypervolume_history(study: optuna.Study) -> pd.DataFrame:
    """Normalized hypervolume after each complete trial, in trial order.

    Args:
        study: A study with objectives ``(int8_accuracy, macs, param_bytes)`` (first; the
            optional fourth, peak activation RAM, is left out: it has no reference point unless
            the budget limits it, and the hypervolumes of all studies stay comparable).

    Returns:
        Columns ``trial`` and ``hypervolume`` (one row per complete trial; empty if none).
    """
    ref = reference_point(study)
    scratch_trials = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is None or len(t.values) < 3:
            continue
        accuracy, macs, nbytes = t.values[:3]  # a fourth (peak RAM) has no budget reference
        scratch_trials.append(
            create_trial(
                values=[accuracy, macs / ref.max_macs, nbytes / ref.max_param_bytes],
                constraints=dict(t.constraints) if t.constraints else None,
                user_attrs={"number": t.number},
            )
        )
    if not scratch_trials:
        return pd.DataFrame({"trial": pd.Series(dtype="int64"), "hypervolume": []})
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        scratch = optuna.create_study(directions=["maximize", "minimize", "minimize"])
        scratch.add_trials(scratch_trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            figure = optuna.visualization.plot_hypervolume_history(
                scratch, reference_point=[ref.accuracy, 1.0, 1.0]
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    values = list(figure.data[0].y) if figure.data else [0.0] * len(scratch_trials)
    numbers = [t.user_attrs["number"] for t in scratch.trials]
    hv = [0.0 if v is None or not math.isfinite(v) else float(v) for v in values]
    return pd.DataFrame({"trial": numbers, "hypervolume": hv})
