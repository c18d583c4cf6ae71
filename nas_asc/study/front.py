"""A study's Pareto front: which trials are on it, in which order, and how well the
validation ranking agrees with the test fold's.

The one definition the report, the end-of-search test measurement, ``evaluate``, ``finetune``
and the exports share: a trial is on the front when it is complete, trained and feasible and
no other such trial dominates it in the study's objectives (Optuna's ``best_trials``); the front
is listed by MACs, then parameter bytes, then trial number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_asc.study.storage import exact_hypervolume

__all__ = [
    "as_number",
    "compute_hypervolume",
    "front_trials",
    "is_trained_feasible",
    "kendall_tau",
    "kendall_test",
    "metric_values",
    "pareto_trials",
    "recorded_figure",
    "trial_feasible",
    "trial_status",
]


def as_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return math.nan
    return float(value)


def metric_values(study: optuna.Study, trial: FrozenTrial) -> dict[str, float]:
    names = study.metric_names
    if not names or trial.values is None or len(names) != len(trial.values):
        return {}
    return dict(zip(names, trial.values, strict=True))


def trial_status(trial: FrozenTrial) -> str | None:
    status = trial.user_attrs.get("status")
    if status is not None:
        return str(status)
    if trial.state == TrialState.FAIL:
        return "failed"
    return None


def trial_feasible(trial: FrozenTrial) -> bool | None:
    """The ``feasible`` user attribute, else whether every constraint is <= 0, else unknown."""
    feasible = trial.user_attrs.get("feasible")
    if isinstance(feasible, bool):
        return feasible
    if trial.constraints:
        return all(value <= 0.0 for value in trial.constraints.values())
    return None


def is_trained_feasible(trial: FrozenTrial) -> bool:
    return (
        trial.state == TrialState.COMPLETE
        and trial_status(trial) in ("trained", None)
        and trial_feasible(trial) is not False
    )


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal trials among the complete, trained and feasible ones.

    Uses Optuna's constraint-aware ``best_trials``. Should its front contain a trial that is
    not trained or not feasible by the user attributes (e.g. one whose constraints were not
    set), the front is recomputed by Optuna over the trained, feasible trials alone, in a
    scratch in-memory study, so that such a trial cannot hide the trials it dominates.
    """
    if len(study.directions) < 2:
        raise ValueError(
            f"study {study.study_name!r} is single-objective; the Pareto report needs the "
            "(int8_accuracy, macs, param_bytes) objectives"
        )
    front = study.best_trials
    if all(is_trained_feasible(t) for t in front):
        return front
    candidates = [t for t in study.get_trials(deepcopy=False) if is_trained_feasible(t)]
    if not candidates:
        return []
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        scratch = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    scratch.add_trials(candidates)  # numbered 0, 1, ... in order
    return [candidates[t.number] for t in scratch.best_trials]


def recorded_figure(
    study: optuna.Study,
    trial: FrozenTrial,
    name: str,
    values: dict[str, float] | None = None,
) -> float:
    """Figure ``name`` of ``trial``: its attribute, else its objective value of that name (a study
    that did not record the attribute); NaN when neither is a number. ``values``: the trial's
    :func:`metric_values`, when the caller has them."""
    value = trial.user_attrs.get(name)
    if value is None:
        value = (metric_values(study, trial) if values is None else values).get(name)
    return as_number(value)


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """:func:`pareto_trials` listed by MACs, then parameter bytes, then trial number (a missing
    figure last): the order of the report's table and of what ``export`` and ``evaluate`` take."""

    def key(trial: FrozenTrial) -> tuple:
        values = metric_values(study, trial)
        macs = recorded_figure(study, trial, "macs", values)
        params = recorded_figure(study, trial, "param_bytes", values)
        # NaN compares false both ways, so a missing figure sorts as the flag alone
        return (
            math.isnan(macs),
            0.0 if math.isnan(macs) else macs,
            math.isnan(params),
            0.0 if math.isnan(params) else params,
            trial.number,
        )

    return sorted(pareto_trials(study), key=key)


def kendall_test(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Kendall's tau-b and its two-sided p-value (``scipy.stats.kendalltau``; exact for small
    samples without ties). None with fewer than two pairs or a constant side."""
    from scipy.stats import kendalltau

    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two sequences of one length, got {x.shape}, {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's tau-b rank correlation of two equally long sequences (ties allowed), by SciPy.

    None with fewer than two pairs or when either side is constant (no ranking to compare).
    """
    result = kendall_test(xs, ys)
    return None if result is None else result[0]


def compute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume that ``points`` (minimized objectives, one row each) dominate up to
    ``reference``, by Optuna's own exact computation (reached through
    :func:`nas_asc.study.storage.exact_hypervolume`, the module that holds Optuna's internals)."""
    return exact_hypervolume(points, reference)
