"""Search backends: what runs a study's trials, behind one small base class.

A backend is a :class:`~nas_asc.search.backends.base.SearchBackend` registered by name in
:data:`~nas_asc.search.backends.base.BACKENDS`:

* ``optuna`` (:class:`~nas_asc.search.backends.optuna.OptunaBackend`): trials run in this
  process, or in ``--workers N`` processes that share a database server (PostgreSQL);
* ``ray`` (:class:`~nas_asc.search.backends.ray.RayBackend`): trials run as Ray Tune trials,
  locally or on a cluster (``address``).

Both write the same trial records to the same Optuna study (the objective, budget gate,
attributes and checkpoints are one code path: :class:`~nas_asc.search.objective.Objective`),
continue each other's studies, re-queue a dead worker's trial with its parameters and seed, and
stop after ``max_failures`` failed trials in a row. The CLI only names the backend::

    backend = create_backend("ray", address="auto")
    backend.check(settings)            # before any data is loaded
    study = backend.run(context, settings, data_label, data_info)

The backends import :mod:`~nas_asc.search.backends.base`; this module imports them (when a
backend is first asked for), so the arrows run one way.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from nas_asc.errors import NasAscError
from nas_asc.search.backends.base import BACKENDS, SearchBackend

if TYPE_CHECKING:
    import optuna

    from nas_asc.search.objective import SearchContext
    from nas_asc.search.settings import SearchSettings

__all__ = ["BACKENDS", "SearchBackend", "create_backend", "list_backends", "run_trials"]


def _load_builtin() -> None:
    # importing a backend's module registers it; Ray itself is imported only when a Ray
    # search runs
    import nas_asc.search.backends.optuna  # noqa: F401
    import nas_asc.search.backends.ray  # noqa: F401


def list_backends() -> list[str]:
    """Names of the registered search backends."""
    _load_builtin()
    return BACKENDS.names()


def create_backend(name: str, **options) -> SearchBackend:
    """The backend registered as ``name``, built with ``options`` (None values left out).

    Raises:
        NasAscError: an unknown backend, or an option it does not take.
    """
    _load_builtin()
    try:
        cls = BACKENDS.get(name)
    except ValueError as exc:
        raise NasAscError(str(exc)) from None
    given = {key: value for key, value in options.items() if value is not None}
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(given) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "no options"
        raise NasAscError(
            f"search backend {name!r} does not take {', '.join(unknown)} (it takes {takes}); "
            "leave it out or choose another --backend"
        )
    return cls(**given)


def run_trials(
    context: SearchContext,
    settings: SearchSettings,
    data_label: str,
    data_info: dict | None = None,
    backend: str | SearchBackend = "optuna",
) -> optuna.Study:
    """Check the settings and run the study's trials with ``backend`` (a name or an instance).

    The trials alone: :func:`nas_asc.pipeline.search.run_search` is the whole search (data,
    teacher, features, these trials, the test-fold measurement, the report).
    """
    runner = create_backend(backend) if isinstance(backend, str) else backend
    runner.check(settings)
    return runner.run(context, settings, data_label, data_info)
