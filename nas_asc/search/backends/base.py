"""The base of the search backends: :class:`SearchBackend`, the :data:`BACKENDS` registry and
the streak counters both backends share. The backends themselves (``optuna``, ``ray``) live next
to it and register on import; :mod:`nas_asc.search.backends` imports them, never this module."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from nas_asc._registry import Registry
from nas_asc.errors import NasAscError

if TYPE_CHECKING:
    from nas_asc.progress import Reporter
    from nas_asc.search.objective import SearchContext
    from nas_asc.search.settings import SearchSettings
    from nas_asc.search.study import TrialCounts

__all__ = [
    "BACKENDS",
    "FailureStreak",
    "RejectionStreak",
    "SearchBackend",
    "already_done",
]

BACKENDS: Registry[type[SearchBackend]] = Registry("search backend")


class SearchBackend(abc.ABC):
    """Runs (or continues) a study until it has ``settings.n_trials`` finished trials.

    Subclasses take their own options as keyword arguments of ``__init__`` (e.g. Ray's
    ``address``) and implement :meth:`run`; :meth:`check` refuses, before any expensive work,
    settings the backend cannot run.
    """

    name: str = ""

    def check(self, settings: SearchSettings) -> None:  # noqa: B027 -- optional hook
        """Raise ``NasAscError`` for settings this backend cannot run (called before any work)."""

    @abc.abstractmethod
    def run(
        self,
        context: SearchContext,
        settings: SearchSettings,
        data_label: str,
        data_info: dict | None = None,
    ) -> optuna.Study:
        """Run the search; return the study, reloaded from its storage.

        Args:
            context: what every trial shares (space, budget, data, teacher, reporter).
            settings: the study, its trial count, sampler, pruner and workers.
            data_label: the dataset's description, recorded in the study.
            data_info: dataset root, split, fingerprint and protocol, recorded for
                ``evaluate``, export and the end-of-search test measurement.
        """


def already_done(counts: TrialCounts, settings: SearchSettings, reporter: Reporter) -> bool:
    """Whether the study has its trials (none waiting to be retried); says so if it has."""
    if counts.done < settings.n_trials or counts.waiting:
        return False
    reporter.message(
        f"study {settings.study_name!r} already has {counts.done} trials (asked for "
        f"{settings.n_trials}; proposals over budget do not count); raise --trials to run more"
    )
    return True


class RejectionStreak:
    """Counts over-budget proposals in a row; :meth:`check` stops the search at ``limit``.

    A proposal over budget is rejected in milliseconds, untrained, and takes no slot of
    ``--trials``; a space whose candidates almost never fit would propose for ever. The error
    names the smallest candidate the streak saw (closest to fitting) and the limits.
    """

    def __init__(self, limit: int, budget) -> None:
        self.limit = limit
        self.budget = budget
        self.count = 0
        self.smallest: tuple[float, tuple[int, ...]] | None = None  # (largest share, figures)
        # (user attribute, budget limit, words): the RAM limit only when the budget sets one
        self._limits = [
            ("param_bytes", budget.max_param_bytes, "parameter bytes"),
            ("macs", budget.max_macs, "MACs"),
        ]
        if budget.limits_ram:
            limit = budget.max_activation_bytes
            self._limits.append(("peak_activation_bytes", limit, "activation bytes at peak"))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: record the finished trial's outcome."""
        self.record(trial)

    def record(self, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("status") != "infeasible":
            if trial.state.is_finished():
                self.count = 0
                self.smallest = None
            return
        self.count += 1
        figures = tuple(trial.user_attrs.get(key) for key, _, _ in self._limits)
        if all(isinstance(v, int) for v in figures):
            share = max(v / limit for v, (_, limit, _) in zip(figures, self._limits, strict=True))
            if self.smallest is None or share < self.smallest[0]:
                self.smallest = (share, figures)

    def check(self) -> None:
        """Raise ``NasAscError`` once ``limit`` proposals in a row were over budget."""
        if self.count < self.limit:
            return

        def listed(values) -> str:
            words = [f"{v:,} {name}" for v, (_, _, name) in zip(values, self._limits, strict=True)]
            return ", ".join(words[:-1]) + " and " + words[-1]

        smallest = "" if self.smallest is None else f"; the smallest had {listed(self.smallest[1])}"
        limits = ", ".join(f"{limit:,} {name}" for _, limit, name in self._limits)
        limits = limits.replace(" at peak", "")
        raise NasAscError(
            f"{self.count} proposals in a row were over budget ({limits}){smallest}: narrow the "
            "space to smaller models or raise --budget; the study keeps every finished trial"
        )


class FailureStreak:
    """Counts failed trials in a row; :meth:`check` stops the search at ``limit`` of them.

    One candidate that fails (a diverging loss, a config its family refuses) is that trial's
    problem, and the search goes on; trial after trial failing is a problem of the setup (a
    broken dataset, a bug), and running the rest of the study would only fail it more.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.last_reason = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: record the finished trial's outcome."""
        self.record(trial.state, trial.user_attrs.get("fail_reason", "unknown error"))

    def record(self, state: TrialState, reason: str = "") -> None:
        if state == TrialState.FAIL:
            self.count += 1
            self.last_reason = reason
        elif state.is_finished():
            self.count = 0

    def check(self) -> None:
        """Raise ``NasAscError`` once ``limit`` trials in a row have failed."""
        if self.count >= self.limit:
            raise NasAscError(
                f"{self.count} trials in a row failed, the last with {self.last_reason}; the "
                "study keeps every finished trial: fix the cause and run the same command again"
            )
