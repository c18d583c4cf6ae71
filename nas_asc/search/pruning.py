"""Early stopping for multi-objective searches: prune a trial dominated at the same epoch.

Optuna 5 refuses ``trial.report``/``trial.should_prune`` in multi-objective studies, and its pruners
compare one value. In nas-asc the complexity objectives (MACs, parameter bytes) are known before
training, so only accuracy is open while a candidate trains. After each epoch ``k`` the trial's
intermediate accuracy is compared with the trials that already got past epoch ``k`` and cost no more
(MACs and parameter bytes both lower or equal): if enough of them were at least as accurate at epoch
``k`` -- the trial is dominated on all three objectives at that point -- it is stopped. With the
default ``reduction_factor`` of 3 a trial survives epoch ``k`` only if it is in the top third of its
comparable peers, as in successive halving; unlike successive halving a cheap trial is never
compared with dearer ones, so the small end of the Pareto front is not starved.

Intermediate accuracies are kept as the user attribute ``epoch_accuracy`` (one value per finished
epoch) on every trial of a search with a pruner, stopped or not, so that the rule can be replayed
from the study alone.
A pruned trial ends in state ``PRUNED`` with ``status = "pruned"`` and ``last_accuracy``; it never
enters the Pareto front.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_asc._registry import Registry, build_config, parse_spec

__all__ = ["EpochPruner", "DominancePruner", "NopPruner", "create_pruner", "PRUNERS"]

EPOCH_ACCURACY = "epoch_accuracy"  # user attribute: intermediate accuracy after each epoch


class EpochPruner(abc.ABC):
    """Decides, after an epoch, whether a multi-objective trial should stop."""

    @abc.abstractmethod
    def should_prune(
        self,
        study: optuna.Study,
        trial_number: int,
        macs: float,
        param_bytes: float,
        curve,
        peak_activation_bytes: float | None = None,
    ) -> bool:
        """Return True to stop the trial.

        Args:
            study: the study (finished trials are read from it).
            trial_number: the running trial (excluded from its own peers).
            macs: the running candidate's MACs.
            param_bytes: the running candidate's parameter bytes.
            curve: its intermediate accuracies so far, one per finished epoch.
            peak_activation_bytes: its peak activation RAM (an objective of a study created
                with ``--ram-objective``; None when unknown).
        """

    def describe(self) -> dict:
        """Settings recorded in the study."""
        return {"name": type(self).__name__}


class NopPruner(EpochPruner):
    """Never prunes (``--pruner none``)."""

    def should_prune(
        self, study, trial_number, macs, param_bytes, curve, peak_activation_bytes=None
    ) -> bool:
        return False


@dataclass(frozen=True)
class DominancePruner(EpochPruner):
    """Prune a trial dominated at epoch ``k`` by enough peers of equal or lower complexity.

    Args:
        reduction_factor: a trial survives epoch ``k`` only if fewer than ``(1 - 1/eta)`` of its
            comparable peers were at least as accurate at epoch ``k`` (eta = 3 keeps the top third).
        min_peers: no decision until this many comparable peers reached epoch ``k``.
        min_epochs: never prune before this many epochs have finished (2: the first epoch is the
            learning-rate warm-up, whose accuracy says little).
    """

    reduction_factor: float = 3.0
    min_peers: int = 3
    min_epochs: int = 2

    def __post_init__(self) -> None:
        eta = self.reduction_factor
        if isinstance(eta, bool) or not isinstance(eta, (int, float)):
            raise ValueError(f"pruner reduction_factor must be a number > 1, got {eta!r}")
        if not math.isfinite(eta):  # inf, nan, or 1e400 (read as inf): no share to keep
            raise ValueError(
                f"pruner reduction_factor must be a finite number > 1, got {eta!r}; e.g. "
                "reduction_factor=3"
            )
        if not eta > 1:
            raise ValueError(f"pruner reduction_factor must be > 1, got {eta}")
        for key in ("min_peers", "min_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"pruner {key} must be an integer >= 1, got {value!r}")

    def should_prune(
        self,
        study: optuna.Study,
        trial_number: int,
        macs: float,
        param_bytes: float,
        curve: Sequence[float],
        peak_activation_bytes: float | None = None,
    ) -> bool:
        epoch = len(curve) - 1
        if len(curve) < self.min_epochs:
            return False
        accuracy = curve[epoch]
        if not math.isfinite(accuracy):
            return False
        # with the RAM objective a peer must not need more activation RAM either
        ram = len(study.directions) > 3
        if ram and peak_activation_bytes is None:
            return False
        peers = [
            t.user_attrs[EPOCH_ACCURACY][epoch]
            for t in _finished(study)
            if t.number != trial_number
            # a filter-pruned trial's curve belongs to the larger network it trained before it
            # was cut to its recorded complexity: not a fair peer
            and "pruning" not in t.user_attrs
            and len(t.user_attrs.get(EPOCH_ACCURACY, ())) > epoch
            and t.user_attrs.get("macs", math.inf) <= macs
            and t.user_attrs.get("param_bytes", math.inf) <= param_bytes
            and (
                not ram
                or (t.user_attrs.get("peak_activation_bytes") or math.inf) <= peak_activation_bytes
            )
        ]
        if len(peers) < self.min_peers:
            return False
        at_least_as_good = sum(1 for acc in peers if acc >= accuracy)
        # share >= 1 - 1/eta, multiplied out: 2/3 >= 1 - 1/3 is False in floating point
        return at_least_as_good * self.reduction_factor >= (self.reduction_factor - 1) * len(peers)

    def describe(self) -> dict:
        return {
            "name": "dominance",
            "reduction_factor": self.reduction_factor,
            "min_peers": self.min_peers,
            "min_epochs": self.min_epochs,
        }


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# name -> pruner class (a dataclass whose fields are the spec's keys, or a class without settings)
PRUNERS: Registry[type[EpochPruner]] = Registry("pruner")
PRUNERS.register("dominance", DominancePruner)
PRUNERS.register("none", NopPruner)

_EXAMPLE = "dominance:reduction_factor=3,min_peers=3,min_epochs=2"


def create_pruner(spec: str | EpochPruner, **kwargs) -> EpochPruner:
    """The pruner named by ``spec``: ``NAME`` or ``NAME:KEY=VALUE,...``, plus ``kwargs``.

    Args:
        spec: a name of :data:`PRUNERS` (``dominance``, the default, or ``none``), optionally
            with settings, the pruner's fields: ``dominance:reduction_factor=2,min_peers=5``;
            or a pruner, returned as it is.
        **kwargs: more settings, overriding those of ``spec``.

    Raises:
        ValueError: a one-line message for an unknown name, key or value.
    """
    if isinstance(spec, EpochPruner) and not kwargs:
        return spec
    name, settings = parse_spec(spec, "pruner", example=_EXAMPLE)
    if name not in PRUNERS:
        raise ValueError(
            f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)} (with settings: "
            f"{_EXAMPLE})"
        )
    cls = PRUNERS.get(name)
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    for key in settings:
        if not fields:
            raise ValueError(f"pruner {spec!r}: pruner {name!r} takes no settings, got {key!r}")
        if key not in fields:
            raise ValueError(
                f"pruner {spec!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}, "
                f"got {key!r}"
            )
    return build_config(cls, {**settings, **kwargs}, f"pruner {spec!r}")
