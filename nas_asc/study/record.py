"""What ``nas-asc search`` recorded in a study, read back one way.

The search writes the budget when it creates a study (:func:`nas_asc.search.study.prepare_study`);
``evaluate``, ``export`` and the DCASE 2025 package read it back here, so a study that records no
budget (one not made by nas-asc) is one clear error in every command.
"""

from __future__ import annotations

from collections.abc import Mapping

import optuna

from nas_asc.budget import Budget
from nas_asc.errors import NasAscError

__all__ = ["recorded_budget", "require_budget"]


def recorded_budget(study: optuna.Study) -> Budget | None:
    """The budget ``study`` was searched under; None when it records none or one that is not a
    budget (a study nas-asc did not make)."""
    raw = study.user_attrs.get("budget")
    if not isinstance(raw, Mapping):
        return None
    try:
        return Budget(**raw)
    except (TypeError, ValueError):  # BudgetError is a ValueError
        return None


def require_budget(study: optuna.Study) -> Budget:
    """:func:`recorded_budget`, or a one-line ``NasAscError`` when the study records none."""
    budget = recorded_budget(study)
    if budget is None:
        raise NasAscError(
            f"study {study.study_name!r} records no budget; it was not run by nas-asc search"
        )
    return budget
