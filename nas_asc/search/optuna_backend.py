"""Embedded search backend: an Optuna multi-objective study (TPE, constraint-aware).

Objectives are named (``int8_accuracy`` maximized; ``macs`` and ``param_bytes`` minimized) so the
dashboard and reports show them by name. The study's user attributes record the space, budget,
dataset, seed, sampler and pruner.

Resuming and crashes: re-running the same search continues the study up to its trial count.
Running trials write a heartbeat to the storage; a trial whose worker was killed (its heartbeat
stale) is failed and re-queued with the same parameters and seed by the next worker that looks, at
most ``max_retry`` times, and the re-queued copy is what counts. Completed trials are never redone.

Parallel workers: several processes (``--workers N`` here, or the same command on other machines)
share one study through a database server such as PostgreSQL. SQLite, the embedded default, is for
one process; asking it for parallel workers is refused with a pointer to PostgreSQL or Ray.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from nas_asc.budget import Budget
from nas_asc.errors import NasAscError
from nas_asc.search.objective import (
    DIRECTIONS,
    OBJECTIVE_NAMES,
    Objective,
    SearchContext,
    TrialError,
    retry_history,
    trial_seed,
)
from nas_asc.search.pruning import create_pruner

__all__ = [
    "FailureStreak",
    "SearchSettings",
    "TrialCounts",
    "check_parallel_storage",
    "default_storage",
    "TrialSeededSampler",
    "already_done",
    "check_existing_study",
    "make_sampler",
    "open_study",
    "sqlite_path",
    "optimize",
    "prepare_study",
    "run_search",
    "trial_counts",
]

_LOG = logging.getLogger(__name__)

# Failures inside one trial (a model that does not build, a diverging loss, a quantization error)
# mark that trial FAIL, with its reason as a user attribute, and the study goes on.
# Failures that end only their trial (Objective raises TrialError for any error of the
# candidate). A systematic error that still fails every trial (a bug) is caught by
# SearchSettings.max_failures: that many failed trials in a row stop the search.
_TRIAL_ERRORS = (TrialError,)


@dataclass(frozen=True)
class SearchSettings:
    study_name: str
    storage: str
    n_trials: int  # finished trials the study should reach (retried crashes do not count)
    timeout: float | None = None  # stop starting trials after this many seconds
    seed: int = 0  # study seed; every trial's sampler and training seeds derive from it
    artifact_dir: str | None = None  # checkpoint/image artifact store; None: keep no artifacts
    sampler: str = "tpe"  # tpe (multivariate, constraint-aware) | random
    pruner: str = "dominance"  # early stopping (nas_asc.search.pruning.create_pruner spec)
    workers: int = 1  # worker processes on this machine (more than 1 needs a server database)
    heartbeat: int = 30  # seconds between a running trial's heartbeats; a trial silent for
    # HEARTBEAT_GRACE x heartbeat seconds belongs to a dead worker and is re-queued
    max_retry: int = 2  # times a trial of a dead worker is re-queued before it stays failed
    max_failures: int = 10  # failed trials in a row (in one worker) that stop the search
    artifact_dir_explicit: bool = True  # False: artifact_dir is only the default folder, and a
    # study that records another one keeps it (workers started from other working folders)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise NasAscError(
                f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}"
            )
        try:
            create_pruner(self.pruner)
        except ValueError as exc:
            raise NasAscError(str(exc)) from None
        if self.workers < 1:
            raise NasAscError(f"workers must be >= 1, got {self.workers}")
        if self.heartbeat < 1:
            raise NasAscError(f"heartbeat must be >= 1 second, got {self.heartbeat}")
        if self.max_failures < 1:
            raise NasAscError(f"max_failures must be >= 1, got {self.max_failures}")


HEARTBEAT_GRACE = 4  # heartbeats a trial may miss before it counts as abandoned

SAMPLERS = ("tpe", "random")


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler for one trial: ``tpe`` (multivariate, learns the feasible region from the
    constraints) or ``random``, seeded by the trial's own seed.

    TPE keeps Optuna's ``constant_liar`` default (on): a trial running elsewhere counts as if it
    had scored the worst value seen, so concurrent workers spread out instead of sampling next
    to each other.
    """
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, multivariate=True)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A fresh ``make_sampler(kind, ...)`` for every trial, seeded by the study seed and the
    trial's own number.

    The seed is taken once the trial exists (Optuna calls :meth:`before_trial` with it), so
    workers that start trials at the same moment get different numbers and different seeds,
    and a study that was interrupted and continued samples what an uninterrupted one would
    have, given the same finished trials. Each open trial keeps its own sampler until it ends.
    """

    def __init__(self, kind: str, study_seed: int) -> None:
        self.kind = kind
        self.study_seed = study_seed
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._samplers:
            seed = trial_seed(self.study_seed, trial.number)
            self._samplers[trial.number] = make_sampler(self.kind, seed)
        return self._samplers[trial.number]

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:
        for sampler in self._samplers.values():
            sampler.reseed_rng()


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` storage URL; None for other URLs and memory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(url[len(prefix) :])


def default_storage(study_name: str, studies_dir: str | Path = "studies") -> str:
    """SQLite storage ``studies/<study>.db`` (relative to the working directory).

    Creates nothing: the folder is made when the study is (see ``_storage``).
    """
    return f"sqlite:///{Path(studies_dir) / f'{study_name}.db'}"


# Arbitrary keys of the PostgreSQL advisory locks that serialise workers starting together.
_SCHEMA_LOCK_KEY = 0x6E61_735F_6173_63  # Optuna creating its tables
_STUDY_LOCK_KEY = _SCHEMA_LOCK_KEY + 1  # a worker checking and recording the study's settings


@contextlib.contextmanager
def _advisory_lock(url: str, key: int) -> Iterator[None]:
    """Hold PostgreSQL advisory lock ``key`` of the storage's database inside the block.

    Workers that start together on a fresh database would otherwise all run ``CREATE TABLE``
    at once (all but one fail with a unique violation in PostgreSQL's catalog), and could each
    record their own settings in a study that another is creating. The lock is per database and
    released with its connection, so a killed worker cannot leave it held. Other back ends need
    nothing: SQLite serialises writes itself, and several processes on one SQLite file are not a
    supported setup.
    """
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def _storage(
    url: str, heartbeat: int | None = None, max_retry: int = 2
) -> optuna.storages.BaseStorage:
    kwargs: dict = {}
    if heartbeat is not None:
        # a running trial writes a heartbeat every `heartbeat` seconds; one silent for longer
        # than the grace period belongs to a dead worker: it is failed and re-queued (same
        # parameters) by whichever worker notices first
        with warnings.catch_warnings():
            # experimental since Optuna 2.8 and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)
        kwargs = dict(
            heartbeat_interval=heartbeat,
            grace_period=HEARTBEAT_GRACE * heartbeat,
            heartbeat_stale_trial_callback=retry,
        )
    if (db := sqlite_path(url)) is not None:
        folder = db.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NasAscError(
                f"cannot create the studies folder {folder}: {exc.strerror}; run from a "
                "writable folder or pass --storage"
            ) from None
    try:
        with warnings.catch_warnings(), _advisory_lock(url, _SCHEMA_LOCK_KEY):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if url.startswith("sqlite:"):
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 30}}, **kwargs
                )
            # pool_pre_ping: a worker that idles past the server's timeout reconnects cleanly
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except ImportError as exc:
        raise NasAscError(
            f"cannot open study storage {url!r}: {exc}; install the database driver "
            "(PostgreSQL: pip install 'psycopg[binary]')"
        ) from None
    except Exception as exc:  # SQLAlchemy raises many types; the user needs one line
        raise NasAscError(
            f"cannot open study storage {url!r}: {str(exc).splitlines()[0]}; check the URL "
            "(e.g. sqlite:///studies/my.db or postgresql://user@host/db) and that the database "
            "server is running"
        ) from None


def open_study(
    study_name: str,
    storage: str,
    create: bool = False,
    seed: int = 0,
    heartbeat: int | None = None,
    max_retry: int = 2,
) -> optuna.Study:
    """Open (or with ``create``, create or continue) a nas-asc study."""
    store = _storage(storage, heartbeat, max_retry)
    sampler = make_sampler("tpe", seed)
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


def _check_same_settings(
    study: optuna.Study,
    space_name: str,
    budget: Budget,
    seed: int,
    fingerprint: str | None,
    protocol: dict | None = None,
) -> None:
    """Refuse to continue a study with another space, budget, seed, dataset or protocol.

    Sampler, pruner, workers and ``--epochs`` may change between runs of a study; these may
    not, or its trials would no longer be comparable (another dataset or validation split),
    reproducible (another seed) or judged alike (another budget).
    """
    attrs = study.user_attrs
    if "space" not in attrs:
        return
    if attrs["space"] != space_name or attrs.get("budget") != budget.to_dict():
        raise NasAscError(
            f"study {study.study_name!r} was started with space {attrs['space']!r} and budget "
            f"{attrs.get('budget', {}).get('name')!r}; continue it with the same --space and "
            "--budget, or choose a new --study name"
        )
    if attrs.get("seed", seed) != seed:
        raise NasAscError(
            f"study {study.study_name!r} was started with --seed {attrs['seed']}; continue it "
            f"with --seed {attrs['seed']} (its trials' seeds derive from it), or choose a new "
            "--study name"
        )
    recorded = (attrs.get("data_info") or {}).get("fingerprint")
    if fingerprint and recorded and recorded != fingerprint:
        raise NasAscError(
            f"study {study.study_name!r} was run on another dataset ({attrs.get('data')}); "
            "continue it with the same --data and --train-split, or choose a new --study name"
        )
    if protocol is not None:
        _check_same_protocol(study, protocol)


def _check_same_protocol(study: optuna.Study, protocol: dict) -> None:
    """Refuse to continue a study on another validation split (or one whose objectives were
    measured on the test fold, by an nas-asc older than the validation protocol)."""
    recorded = study.user_attrs.get("protocol")
    name = study.study_name
    if not isinstance(recorded, dict):
        raise NasAscError(
            f"study {name!r} was run before nas-asc searched on a validation split (its "
            "objectives read the test fold); choose a new --study name"
        )
    keys = ("train_split", "validation", "validation_split")
    if all(recorded.get(k) == protocol.get(k) for k in keys):
        return
    if recorded.get("validation") == "file":
        was = f"the validation split file {recorded.get('validation_file')}"
        how = f"--validation-split {recorded.get('validation_file')}"
    else:
        fraction = recorded.get("validation_fraction")
        was = f"--validation {fraction} (seed {recorded.get('validation_seed')})"
        how = f"--validation {fraction}"
    raise NasAscError(
        f"study {name!r} was searched on training split {recorded.get('train_split')} with "
        f"{was}, another validation split than this one; continue it with --train-split "
        f"{recorded.get('train_split')} {how} on the same dataset, or choose a new --study name"
    )


def check_existing_study(
    storage: str,
    study_name: str,
    space_name: str,
    budget: Budget,
    seed: int,
    fingerprint: str | None,
    artifact_dir: str | Path | None = None,
    protocol: dict | None = None,
) -> str | None:
    """Check, before any expensive work, that an existing study may be continued as asked.

    Creates nothing: a missing SQLite file or study is a new study. Raises ``NasAscError`` for a
    study of another space, budget, seed, dataset or validation split (``protocol``:
    :meth:`~nas_asc.data.protocol.Protocol.identity`), or (``artifact_dir``: given explicitly)
    with another artifact folder.

    Returns:
        The artifact folder the study records, or None.
    """
    db = sqlite_path(storage)
    if db is not None and not db.is_file():
        return None
    store = _storage(storage)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=store)
        except KeyError:
            return None
        _check_same_settings(study, space_name, budget, seed, fingerprint, protocol)
        recorded = study.user_attrs.get("artifact_dir")
        if recorded and artifact_dir and Path(recorded) != Path(artifact_dir).resolve():
            raise NasAscError(
                f"study {study_name!r} keeps its checkpoints in {recorded}; continue it with "
                f"--artifacts {recorded}, or choose a new --study name"
            )
        return recorded
    finally:
        _dispose(store)


def _dispose(store: optuna.storages.BaseStorage) -> None:
    """Close the database connections of an RDB storage (no-op for others)."""
    engine = getattr(getattr(store, "_backend", store), "engine", None)  # Optuna may wrap it
    if engine is not None:
        engine.dispose()


def _resolve_artifact_dir(
    study: optuna.Study, context: SearchContext, settings: SearchSettings
) -> str:
    """The study's artifact folder: the one it records, else ``settings.artifact_dir``.

    A worker given a folder explicitly (``--artifacts``) that differs from the recorded one is
    refused; one that was only given the default adopts the recorded folder, so that workers
    started together from different working folders keep one store per study.
    """
    artifact_dir = str(Path(settings.artifact_dir).resolve())
    recorded = study.user_attrs.get("artifact_dir")
    if not recorded or Path(recorded) == Path(artifact_dir):
        return artifact_dir
    if settings.artifact_dir_explicit:
        raise NasAscError(
            f"study {study.study_name!r} keeps its checkpoints in {recorded}; continue it with "
            f"--artifacts {recorded}, or choose a new --study name"
        )
    from nas_asc.search.artifacts import open_artifact_store

    context.artifact_store = open_artifact_store(recorded)
    if context.progress:
        print(f"checkpoints go to the study's artifact folder {recorded}", flush=True)
    return recorded


def prepare_study(
    context: SearchContext,
    settings: SearchSettings,
    data_label: str,
    data_info: dict | None = None,
) -> optuna.Study:
    """Create or continue the study and record what it searches (space, budget, data, seed).

    ``data_info`` (dataset ``root``, ``train_split``, ``fingerprint``, the teacher and IR
    sources) is recorded so that the end-of-search measurement, ``evaluate`` and export can
    rebuild the study's data; its ``protocol`` entry (:meth:`Protocol.to_dict
    <nas_asc.data.protocol.Protocol.to_dict>`) becomes the study attribute ``protocol``.
    Continuing a study with another space, budget, seed, dataset, validation split or artifact
    folder is refused.
    """
    data_info = dict(data_info or {})
    protocol = data_info.pop("protocol", None)
    study = open_study(
        settings.study_name,
        settings.storage,
        create=True,
        seed=settings.seed,
        heartbeat=settings.heartbeat,
        max_retry=settings.max_retry,
    )
    # one worker at a time checks the recorded settings and records its own
    with _advisory_lock(settings.storage, _STUDY_LOCK_KEY):
        fingerprint = data_info.get("fingerprint")
        _check_same_settings(
            study, context.space.name, context.budget, settings.seed, fingerprint, protocol
        )
        if settings.artifact_dir:
            study.set_user_attr("artifact_dir", _resolve_artifact_dir(study, context, settings))
        if data_info:
            study.set_user_attr("data_info", data_info)
        if protocol is not None:
            study.set_user_attr("protocol", protocol)
        # "space" last: it marks the settings complete (_check_same_settings reads the budget
        # of a study that has a space)
        study.set_user_attr("budget", context.budget.to_dict())
        study.set_user_attr("space_definition", context.space.to_dict())
        study.set_user_attr("space", context.space.name)
        study.set_user_attr("data", data_label)
        study.set_user_attr("seed", settings.seed)
        study.set_user_attr("sampler", settings.sampler)
        study.set_user_attr("pruner", create_pruner(settings.pruner).describe())
    return study


@dataclass(frozen=True)
class TrialCounts:
    """Where a study stands; ``done`` is what counts towards ``--trials``."""

    trained: int
    infeasible: int
    pruned: int
    failed: int  # failed for good (an error in the trial, or a dead worker's trial out of retries)
    retried: int  # abandoned by a dead worker and re-queued: not counted, their retry is
    running: int
    waiting: int  # re-queued, not started yet

    @property
    def done(self) -> int:
        return self.trained + self.infeasible + self.pruned + self.failed


def trial_counts(study: optuna.Study) -> TrialCounts:
    """Count the study's trials by outcome (a re-queued crash counts once, as its retry)."""
    trials = study.get_trials(deepcopy=False)
    retried_numbers = {n for t in trials for n in retry_history(t)}
    counts = dict.fromkeys(
        ("trained", "infeasible", "pruned", "failed", "retried", "running", "waiting"), 0
    )
    for t in trials:
        if t.state == TrialState.RUNNING:
            counts["running"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            counts["retried" if t.number in retried_numbers else "failed"] += 1
        elif t.user_attrs.get("status") == "infeasible":
            counts["infeasible"] += 1
        else:
            counts["trained"] += 1
    return TrialCounts(**counts)


def already_done(counts: TrialCounts, settings: SearchSettings) -> bool:
    """Whether the study has its trials (none waiting to be retried); says so if it has."""
    if counts.done < settings.n_trials or counts.waiting:
        return False
    print(
        f"study {settings.study_name!r} already has {counts.done} finished trials "
        f"(asked for {settings.n_trials}); raise --trials to run more",
        flush=True,
    )
    return True


def check_parallel_storage(storage: str, workers: int) -> None:
    """Refuse parallel Optuna workers on SQLite, pointing to PostgreSQL or Ray."""
    if workers > 1 and storage.startswith("sqlite:"):
        raise NasAscError(
            f"{workers} parallel workers need a database server: SQLite serialises "
            "every write and locks up under concurrent trials. Pass --storage "
            "postgresql://USER@HOST/DB (pip install 'psycopg[binary]'), or use --backend ray "
            "--workers N, or run with --workers 1"
        )


def run_search(
    context: SearchContext,
    settings: SearchSettings,
    data_label: str,
    data_info: dict | None = None,
) -> optuna.Study:
    """Run (or continue) the study until ``settings.n_trials`` trials are done.

    Re-running the same study continues it: completed trials are kept, trials left ``RUNNING`` by
    a killed worker are detected by their stale heartbeat and re-queued with the same parameters
    and seed. With ``settings.workers > 1`` that many worker processes share the study through a
    server database (PostgreSQL); more can join from other machines with the same command.
    """
    check_parallel_storage(settings.storage, settings.workers)
    study = prepare_study(context, settings, data_label, data_info)
    if already_done(trial_counts(study), settings):
        return study
    if settings.workers == 1:
        optimize(study, context, settings)
        return study
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    stop = spawn.Event()  # set by a worker whose error ends the search: the others stop too
    errors = spawn.Queue()  # the one-line reason of each worker that stopped at an error
    procs = [
        spawn.Process(
            target=_worker_main,
            args=(context, settings, worker, stop, errors),
            name=f"nas-asc-worker-{worker}",
        )
        for worker in range(settings.workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    reasons = []
    while not errors.empty():
        reasons.append(errors.get())
    failed = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
    if reasons or failed:
        why = reasons[0] if reasons else f"worker processes failed: {', '.join(failed)}"
        raise NasAscError(
            f"{why}; the study keeps every finished trial, re-run the same command to continue"
        )
    return open_study(settings.study_name, settings.storage, seed=settings.seed)


def _worker_main(context: SearchContext, settings: SearchSettings, worker: int, stop, errors):
    """One worker process: trials until the study is done, another worker stops, or an error."""
    from nas_asc.train import accel

    # each worker its share of the cores: more threads per process only oversubscribe the CPU
    accel.configure_threads(parallel_trials=settings.workers)
    try:
        study = open_study(
            settings.study_name,
            settings.storage,
            seed=settings.seed,
            heartbeat=settings.heartbeat,
            max_retry=settings.max_retry,
        )
        optimize(study, context, settings, stop=stop)
    except Exception as exc:  # reported by the parent in one line; the other workers stop
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        errors.put(f"worker {worker}: {type(exc).__name__}: {message}")
        stop.set()
        raise SystemExit(1) from None


def optimize(
    study: optuna.Study, context: SearchContext, settings: SearchSettings, stop=None
) -> None:
    """Run trials in this process until the study has ``settings.n_trials`` done, or until
    ``stop`` (a ``multiprocessing.Event``, from another worker that hit an error) is set.

    Re-queued trials (a dead worker's) run first. Each trial gets a fresh sampler seeded from the
    study seed and the trial's number, so a study that was interrupted and continued samples what
    an uninterrupted one would have, given the same finished trials.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = Objective(context, create_pruner(settings.pruner))
    study.sampler = TrialSeededSampler(settings.sampler, settings.seed)
    streak = FailureStreak(settings.max_failures)
    with _failed_trial_logs_dropped():
        _optimize_loop(study, objective, settings, streak, stop)


class _DropFailedTrialLogs(logging.Filter):
    """Drops Optuna's two warnings per failed trial (one with a traceback): nas-asc prints its
    own line with the reason, and the reason is kept as the trial's ``fail_reason``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with " in message)


@contextlib.contextmanager
def _failed_trial_logs_dropped() -> Iterator[None]:
    handlers = logging.getLogger("optuna").handlers
    drop = _DropFailedTrialLogs()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


def _optimize_loop(study, objective, settings: SearchSettings, streak, stop) -> None:
    started = time.monotonic()
    while stop is None or not stop.is_set():
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            break
        _beat_for_unbeaten_trials(study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trials are re-queued
        counts = trial_counts(study)
        if not counts.waiting:
            if counts.done >= settings.n_trials:
                break
            if counts.done + counts.running >= settings.n_trials:
                # the last trials run elsewhere: wait until they finish, or until their worker
                # is found dead and they are re-queued here
                time.sleep(min(settings.heartbeat, 5))
                continue
        study.optimize(
            objective,
            n_trials=1,
            catch=_TRIAL_ERRORS,
            callbacks=[_record_failure, streak],
            gc_after_trial=True,
        )
        streak.check()


def _beat_for_unbeaten_trials(study: optuna.Study) -> None:
    """Give a heartbeat, dated now, to every running trial that has none yet.

    A trial is running from the moment Optuna starts it, but its heartbeat thread beats only
    once its parameters are sampled; a worker killed in between leaves a trial that Optuna
    never takes for stale (it has no heartbeat to age), and the study would wait for it forever.
    With this beat it ages like any other: a live worker's own beats follow within a heartbeat,
    a dead worker's trial is failed and re-queued after the grace period.
    """
    from optuna.storages._rdb import models

    backend = getattr(study._storage, "_backend", study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage) or backend.heartbeat_interval is None:
        return
    session = backend.scoped_session()
    try:
        running = (
            session.query(models.TrialModel)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialModel.study_id == study._study_id)
            .all()
        )
        unbeaten = [t.trial_id for t in running if not t.heartbeats]
    finally:
        session.close()
    for trial_id in unbeaten:
        backend.record_heartbeat(trial_id)


def _record_failure(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.state == optuna.trial.TrialState.FAIL:
        reason = trial.user_attrs.get("fail_reason", "unknown error")
        print(f"trial {trial.number}: failed ({reason}); the study goes on", flush=True)


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
