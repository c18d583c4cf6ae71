"""Embedded search backend: an Optuna multi-objective study (TPE, constraint-aware).

Objectives are named (``int8_accuracy`` maximized; ``macs`` and ``param_bytes`` minimized) so the
dashboard and reports show them by name. The study's user attributes record the space, budget,
dataset and seed; re-running the same study continues it up to its trial count.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from nas_asc.budget import Budget
from nas_asc.errors import NasAscError
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective, SearchContext

__all__ = ["SearchSettings", "default_storage", "open_study", "run_search"]

_LOG = logging.getLogger(__name__)

# Failures inside one trial (a model that does not build, a diverging loss, a quantization error)
# mark that trial FAIL, with its reason as a user attribute, and the study goes on.
_TRIAL_ERRORS = (ValueError, TypeError, FloatingPointError, RuntimeError)


@dataclass(frozen=True)
class SearchSettings:
    study_name: str
    storage: str
    n_trials: int
    timeout: float | None = None
    seed: int = 0
    artifact_dir: str | None = None  # checkpoint/image artifact store; None: keep no artifacts


def default_storage(study_name: str, studies_dir: str | Path = "studies") -> str:
    """SQLite storage ``studies/<study>.db`` (relative to the working directory)."""
    path = Path(studies_dir) / f"{study_name}.db"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NasAscError(
            f"cannot create the studies folder {path.parent}: {exc.strerror}; run from a writable "
            "folder or pass --storage"
        ) from None
    return f"sqlite:///{path}"


def _storage(url: str) -> optuna.storages.BaseStorage:
    try:
        if url.startswith("sqlite:"):
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy raises many types; the user needs one line
        raise NasAscError(
            f"cannot open study storage {url!r}: {str(exc).splitlines()[0]}; check the URL "
            "(e.g. sqlite:///studies/my.db or postgresql://user@host/db)"
        ) from None


def open_study(study_name: str, storage: str, create: bool = False, seed: int = 0) -> optuna.Study:
    """Open (or with ``create``, create or continue) a nas-asc study."""
    store = _storage(storage)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True)
    if create:
        study = optuna.create_study(
            study_name=study_name,
            storage=store,
            directions=list(DIRECTIONS),
            sampler=sampler,
            load_if_exists=True,
        )
        if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in DIRECTIONS]:
            raise NasAscError(
                f"study {study_name!r} in {storage} was not created by nas-asc (its directions "
                "differ); choose another --study name"
            )
        with warnings.catch_warnings():
            # experimental since Optuna 3.2 and unchanged since; the dashboard reads the names
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVE_NAMES))
        return study
    try:
        return optuna.load_study(study_name=study_name, storage=store, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise NasAscError(
            f"no study named {study_name!r} in {storage}; existing studies: "
            f"{', '.join(names) or '(none)'}"
        ) from None


def _check_same_settings(study: optuna.Study, space_name: str, budget: Budget) -> None:
    attrs = study.user_attrs
    if "space" not in attrs:
        return
    if attrs["space"] != space_name or attrs.get("budget") != budget.to_dict():
        raise NasAscError(
            f"study {study.study_name!r} was started with space {attrs['space']!r} and budget "
            f"{attrs.get('budget', {}).get('name')!r}; continue it with the same --space and "
            "--budget, or choose a new --study name"
        )


def _check_artifact_dir(study: optuna.Study, artifact_dir: str | None) -> None:
    recorded = study.user_attrs.get("artifact_dir")
    if recorded and artifact_dir and Path(recorded) != Path(artifact_dir):
        raise NasAscError(
            f"study {study.study_name!r} keeps its checkpoints in {recorded}; continue it with "
            f"--artifacts {recorded}, or choose a new --study name"
        )


def run_search(
    context: SearchContext,
    settings: SearchSettings,
    data_label: str,
    data_info: dict | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it has ``settings.n_trials`` finished trials.

    ``data_info`` (dataset ``root``, ``train_split``, ``fingerprint``) is recorded so that export
    can re-measure the study's models on the same held-out split.
    """
    study = open_study(settings.study_name, settings.storage, create=True, seed=settings.seed)
    _check_same_settings(study, context.space.name, context.budget)
    if settings.artifact_dir:
        artifact_dir = str(Path(settings.artifact_dir).resolve())
        _check_artifact_dir(study, artifact_dir)
        study.set_user_attr("artifact_dir", artifact_dir)
    if data_info:
        study.set_user_attr("data_info", data_info)
    study.set_user_attr("space", context.space.name)
    study.set_user_attr("space_definition", context.space.to_dict())
    study.set_user_attr("budget", context.budget.to_dict())
    study.set_user_attr("data", data_label)
    study.set_user_attr("seed", settings.seed)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    remaining = settings.n_trials - len(finished)
    if remaining <= 0:
        print(
            f"study {settings.study_name!r} already has {len(finished)} finished trials "
            f"(asked for {settings.n_trials}); raise --trials to run more",
            flush=True,
        )
        return study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        Objective(context),
        n_trials=remaining,
        timeout=settings.timeout,
        catch=_TRIAL_ERRORS,
        callbacks=[_record_failure],
        gc_after_trial=True,
    )
    return study


def _record_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.state == optuna.trial.TrialState.FAIL:
        reason = trial.user_attrs.get("fail_reason", "unknown error")
        print(f"trial {trial.number}: failed ({reason}); the study goes on", flush=True)
