"""Warm start: a new study first trains the space's reference configurations.

A space may name known systems under ``references`` (the seed reports' models, for example
TF-SepNet C = 20, 40 and 60 of report 003). When a study is created, each reference that fits the
budget is queued with Optuna's ``enqueue_trial``: the first trials of the search train it, with
the ``train.*`` values it leaves out sampled as usual, and the sampler starts from what the
literature already knows instead of from random points. A reference over the budget is counted
(milliseconds, no training) and skipped with its reason. The references count towards
``--trials``: a search of N trials queues at most N of them (the first, in the space's order).
What was queued and skipped is recorded in the study attribute ``warm_start``; a continued
study queues nothing again.
"""

from __future__ import annotations

from typing import Any

import optuna

from nas_asc.budget import Budget
from nas_asc.data.features import FrontEnd
from nas_asc.search.space import SearchSpace

__all__ = ["REFERENCE_ATTR", "queue_references"]

#: User attribute of a trial queued from a reference: the reference's name.
REFERENCE_ATTR = "reference"


def queue_references(
    study: optuna.Study, space: SearchSpace, budget: Budget, limit: int | None = None
) -> dict[str, Any]:
    """Queue every reference of ``space`` that fits ``budget`` as the study's next trials, at
    most ``limit`` of them (the search's trial count: each queued reference is a trial trained).

    Returns:
        ``{"queued": [names], "skipped": {name: reason}}``, in the space's order.
    """
    from nas_asc.models import create_model

    queued: list[str] = []
    skipped: dict[str, str] = {}
    for name, values in space.references.items():
        config = space.reference_config(name)
        model = create_model(space.model, **config["model"])
        shape = FrontEnd(**config["frontend"]).input_shape()
        c = budget.count(model, shape, activations=budget.limits_ram)
        violations = budget.violations(c)
        if violations:
            skipped[name] = "over budget: " + "; ".join(violations)
            continue
        if limit is not None and len(queued) >= limit:
            skipped[name] = f"no room: the search trains {limit} trial(s) in all (--trials)"
            continue
        study.enqueue_trial(dict(values), user_attrs={REFERENCE_ATTR: name})
        queued.append(name)
    return {"queued": queued, "skipped": skipped}
