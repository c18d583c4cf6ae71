"""Ray Tune search backend: the nas-asc study run as Ray Tune trials, locally or on a cluster.

Implements the Ray Tune part of issue 5 on top of Ray Tune (Liaw et al., "Tune: A Research
Platform for Distributed Model Selection and Training", 2018) and its Optuna searcher
(``ray.tune.search.optuna.OptunaSearch``; Akiba et al., "Optuna", KDD 2019).

One search, one source of truth: the Optuna study in ``--storage``. ``OptunaSearch`` is given that
storage and study name, the study's objectives (``int8_accuracy`` max, ``macs`` min,
``param_bytes`` min) and the sampler of the optuna backend, and a define-by-run space that calls
``SearchSpace.sample`` (the space YAML stays the only definition). It only *asks*: each Ray trial
carries its Optuna trial number, and the Ray trainable re-attaches to that Optuna trial and runs the
same :class:`~nas_asc.search.objective.Objective` as the optuna backend, so the budget gate, user
attributes, constraints and checkpoints are identical. The trainable also *tells* the outcome
(``COMPLETE`` with the three values, infeasible candidates included; ``PRUNED`` when the dominance
pruner stopped it; ``FAIL`` with ``fail_reason``), so the searcher's own ``tell`` is skipped for
finished trials. Reports, the dashboard and export read the study the same whichever backend ran.

Schedulers. Ray's ASHA (``AsyncHyperBandScheduler``) ranks the trials at a rung on one metric and
mode; this study has three objectives, and ``OptunaSearch`` itself drops intermediate results of
multi-objective studies. Ranking on accuracy alone would stop cheap candidates because dearer ones
are more accurate, starving the small end of the Pareto front; a weighted sum would impose weights
the study does not have; and ASHA stops a trial by ending its worker, so the Optuna trial would not
get its pruned state and last accuracy. ASHA is therefore not valid here and the Ray scheduler is
FIFO. Early stopping is still asynchronous successive halving: the objective's
:class:`~nas_asc.search.pruning.DominancePruner` decides after every epoch against the finished
trials of equal or lower complexity in the shared study, on whichever Ray worker the trial runs.

Workers and resume. ``settings.workers`` is Ray's ``max_concurrent_trials``; every trial takes one
CPU and runs torch with that many threads. Training on GPUs (``--device auto`` on a cluster with
GPUs, or ``cuda``), every trial also takes ``1/k`` of a GPU with ``k = ceil(workers / GPUs)``
(:func:`trial_resources`), so the concurrent trials fill every GPU of the cluster. The searcher
stops asking once the study has ``settings.n_trials`` done trials (``trial_counts``), so re-running
continues a study, whichever backend started it. A trial whose Ray worker died (or was stopped)
before it told its outcome is failed and re-queued with the same parameters and seed, at most
``settings.max_retry`` times, as the optuna backend does with heartbeats; running trials write
heartbeats too, so a search whose driver was killed is picked up by the next run.

Locally (no ``address``) Ray is started with one CPU per worker and shut down at the end. With
``address`` (``auto`` or ``HOST:6379`` of a ``ray start --head`` cluster) the same code runs on the
cluster; then the storage must be a database server every node reaches (PostgreSQL), and the
dataset, artifact folder and ``$NAS_ASC_CACHE`` must exist at the same paths on every node (a
shared file system). Ray's own result files go to a temporary folder: everything that matters is in
the Optuna study and the artifact store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nas_asc.budget import DEFAULT_BUDGET, Budget
from nas_asc.device import resolve_device
from nas_asc.errors import NasAscError
from nas_asc.progress import Reporter
from nas_asc.redact import masked_output, url_password
from nas_asc.search.backends.base import (
    BACKENDS,
    FailureStreak,
    RejectionStreak,
    SearchBackend,
    already_done,
)
from nas_asc.search.objective import (
    Objective,
    SearchContext,
    TrialError,
    machine_error_in,
    machine_error_text,
)
from nas_asc.search.samplers import TrialSeededSampler
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import (
    OBJECTIVE_NAMES,
    absolute_storage,
    close_storage,
    fail_stale_trials,
    open_storage,
    open_study,
    prepare_study,
    requeue_trial,
)
from nas_asc.study.storage import is_sqlite, trial_storage_id

_LOG = logging.getLogger(__name__)

__all__ = [
    "CPUS_PER_TRIAL",
    "INSTALL_HINT",
    "RayBackend",
    "check_ray_address",
    "require_ray",
    "run_ray_search",
]

CPUS_PER_TRIAL = 1  # one core per trial: a small model trains fastest on one thread per process
INSTALL_HINT = "pip install 'ray[tune]'"

# The Ray trial's config carries the number of the Optuna trial it runs under this key.
TRIAL_KEY = "optuna_trial"
_PROBE_SECONDS = 10.0  # a cluster's head node that does not answer in this time is unreachable
_POLL_SECONDS = 1.0  # least time between two looks at the study while waiting for running trials


@BACKENDS.register("ray")
class RayBackend(SearchBackend):
    """Trials as Ray Tune trials, on this machine or on the cluster at ``address``.

    Args:
        address: a running Ray cluster (``auto``, ``HOST:6379``); None starts Ray on this
            machine for the duration of the search.
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def check(self, settings: SearchSettings) -> None:
        """Ray must import; a cluster needs a storage every node reaches, and must answer;
        Ray places trials on GPUs itself (no ``--gpus``), and a local search needs the device
        it asks for here."""
        require_ray()
        if settings.gpus is not None:
            raise NasAscError(
                "--gpus is for --backend optuna; Ray places each trial on a GPU of the cluster "
                "itself (CUDA_VISIBLE_DEVICES limits the GPUs a local Ray sees)"
            )
        if not self.address:
            resolve_device(settings.device)
        if self.address:
            if is_sqlite(settings.storage):
                raise NasAscError(
                    "--ray-address runs trials on the cluster's nodes, which cannot share a "
                    "SQLite file; pass --storage postgresql://USER@HOST/DB that every node "
                    "reaches"
                )
            check_ray_address(self.address)

    def run(
        self,
        context: SearchContext,
        settings: SearchSettings,
        data_label: str,
        data_info: dict | None = None,
    ) -> optuna.Study:
        return run_ray_search(context, settings, data_label, data_info, address=self.address)


def run_ray_search(
    context: SearchContext,
    settings: SearchSettings,
    data_label: str,
    data_info: dict | None = None,
    address: str | None = None,
) -> optuna.Study:
    """Run (or continue) the study through Ray Tune until ``settings.n_trials`` trials are done.

    Args:
        context: what every trial shares (pickled to the Ray workers; features are reloaded there
            from the on-disk cache).
        settings: the search settings; ``workers`` trials run at once, one CPU each.
        data_label: the dataset's description recorded in the study.
        data_info: dataset ``root``, ``train_split`` and ``fingerprint`` recorded for export.
        address: a running Ray cluster (``auto``, ``HOST:6379``); None starts Ray on this machine
            for the duration of the search.

    Returns:
        The study, reloaded from its storage.

    Raises:
        NasAscError: Ray is not installed, the cluster cannot be reached, or a trial hit an error
            that stops the search (the study keeps every finished trial; re-run to continue).

    Example:
        >>> study = run_ray_search(context, SearchSettings("tfsepnet", url, 24, workers=2), "synth")
    """
    ray, tune, optuna_search_cls = _import_ray()
    from ray.tune.schedulers import FIFOScheduler

    settings = dataclasses.replace(settings, storage=absolute_storage(settings.storage))
    context = _with_absolute_paths(context, settings)
    study = prepare_study(context, settings, data_label, data_info)
    counts = fail_stale_trials(study)
    if already_done(counts, settings, context.reporter):
        return study
    context.reporter.search_started(settings.n_trials, counts.done)
    verbosity = optuna.logging.get_verbosity()

    started_ray = _init_ray(ray, address, settings.workers, context.progress)
    searcher = None
    try:
        resources = trial_resources(
            settings.workers, settings.device, ray.cluster_resources().get("GPU", 0)
        )
        searcher = _searcher_class(optuna_search_cls)(
            study, context.space, settings, context.reporter, context.budget
        )
        with (
            tempfile.TemporaryDirectory(prefix="nas-asc-ray-", ignore_cleanup_errors=True) as tmp,
            _environ(RAY_AIR_NEW_OUTPUT="0"),  # the classic reporter: silent at verbose=0
        ):
            tuner = tune.Tuner(
                tune.with_resources(
                    tune.with_parameters(
                        _ray_trial, context=context, settings=settings, verbosity=verbosity
                    ),
                    resources,
                ),
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    # FIFO: ASHA ranks on one metric, which is not valid for this study (see the
                    # module docstring); the dominance pruner in the objective stops trials early
                    scheduler=FIFOScheduler(),
                    num_samples=-1,  # the searcher says when the study has its trials
                    max_concurrent_trials=settings.workers,
                    # one worker process per slot, kept between trials: no torch import per trial
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"nas-asc-{settings.study_name}",
                    storage_path=tmp,
                    verbose=0,  # progress comes from the trials' own lines
                ),
            )
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
        if searcher is not None:
            close_storage(searcher._store)
    if searcher.stop_reason:
        raise NasAscError(searcher.stop_reason)
    return open_study(settings.study_name, settings.storage)


def trial_resources(workers: int, device: str, cluster_gpus: float) -> dict[str, float]:
    """Ray resources of one trial: one CPU, and on GPUs ``1/k`` of one, where ``k`` =
    ``ceil(workers / cluster_gpus)`` trials share a GPU, so ``workers`` concurrent trials fill
    every GPU of the cluster (the tiny models of this task cannot fill one alone).

    Raises:
        NasAscError: ``cuda`` asked for and the cluster has no GPU.
    """
    gpus = int(cluster_gpus)
    if device == "cpu" or (device == "auto" and gpus == 0):
        return {"cpu": CPUS_PER_TRIAL}
    if gpus == 0:
        raise NasAscError(
            f"--device {device}: the Ray cluster has no GPU; use --device cpu (or auto), or "
            "start its nodes on GPU machines"
        )
    per_gpu = math.ceil(workers / gpus)
    return {"cpu": CPUS_PER_TRIAL, "gpu": 1.0 / per_gpu}


def require_ray() -> None:
    """Raise ``NasAscError`` with the install command if Ray Tune cannot be imported.

    The CLI calls it before loading data, so a missing Ray is reported before any work.
    """
    _import_ray()


def _import_ray():
    """Ray, ``ray.tune`` and ``OptunaSearch``, imported only when a Ray search runs."""
    try:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        raise NasAscError(
            f"--backend ray needs Ray Tune, which cannot be imported ({exc}); install it with "
            f"{INSTALL_HINT}, or use --backend optuna"
        ) from None
    return ray, tune, OptunaSearch


def _init_ray(ray, address: str | None, workers: int, progress: bool) -> bool:
    """Start (or connect to) Ray unless this process already did; True if this call did."""
    if ray.is_initialized():
        return False
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}  # trials resolve relative paths like the command did
    if os.environ.get("NAS_ASC_CACHE"):
        env["NAS_ASC_CACHE"] = str(Path(os.environ["NAS_ASC_CACHE"]).expanduser().resolve())
    kwargs: dict[str, Any] = dict(
        runtime_env={"env_vars": env},
        logging_level=logging.ERROR,
        log_to_driver=progress,  # the trials' progress lines, printed by the workers
    )
    # no usage report from a search tool unless the user opted in
    quiet = {} if "RAY_USAGE_STATS_ENABLED" in os.environ else {"RAY_USAGE_STATS_ENABLED": "0"}
    if address:
        check_ray_address(address)
    try:
        with _environ(**quiet):
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers * CPUS_PER_TRIAL, include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = f"connect to the Ray cluster at {address!r}" if address else "start Ray locally"
        raise NasAscError(
            f"cannot {where} ({detail}); start a cluster with `ray start --head` and pass the "
            "address it prints (or auto on one of its nodes), or leave out --ray-address"
        ) from None
    return True


def check_ray_address(address: str) -> None:
    """Fail fast on a ``HOST:PORT`` nobody listens on (Ray itself retries for minutes).

    The CLI calls it before loading data; ``auto`` and ``ray://`` addresses are left to Ray.
    """
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # auto, ray://... (Ray Client): Ray resolves and reports these itself
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_SECONDS).close()
    except OSError as exc:
        raise NasAscError(
            f"cannot connect to the Ray cluster at {address!r} ({exc.strerror or exc}); start "
            "one with `ray start --head` and pass the address it prints (HOST:6379), or auto "
            "on one of its nodes"
        ) from None


@contextlib.contextmanager
def _environ(**values: str):
    """Set environment variables for the ``with`` block (the Tune driver reads them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _with_absolute_paths(context: SearchContext, settings: SearchSettings) -> SearchContext:
    """The context with its artifact store and dataset root at absolute paths, for the workers."""
    changes: dict[str, Any] = {}
    if context.artifact_store is not None and settings.artifact_dir:
        from nas_asc.search.artifacts import open_artifact_store

        changes["artifact_store"] = open_artifact_store(Path(settings.artifact_dir).resolve())
    root = getattr(context.dataset, "root", None)
    if isinstance(root, Path) and dataclasses.is_dataclass(context.dataset):
        changes["dataset"] = dataclasses.replace(context.dataset, root=root.resolve())
    return dataclasses.replace(context, **changes) if changes else context


class _DefineByRun:
    """Ray's define-by-run space: the YAML space samples the trial; the config names the trial."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, int]:
        self.space.sample(trial)
        return {TRIAL_KEY: trial.number}


def _searcher_class(optuna_search_cls: type) -> type:
    """``OptunaSearch`` for a nas-asc study (built here because Ray is imported lazily).

    It asks like ``OptunaSearch`` (with a sampler seeded per trial, as the optuna backend does),
    decides when the study has its trials, and leaves ``tell`` to the trainable; it only fails
    (and re-queues) an Optuna trial whose Ray trial ended without telling.
    """

    class NasAscOptunaSearch(optuna_search_cls):
        def __init__(
            self,
            study: optuna.Study,
            space: SearchSpace,
            settings: SearchSettings,
            reporter: Reporter | None = None,
            budget: Budget = DEFAULT_BUDGET,
        ):
            # a storage without heartbeat settings: the driver asks, workers write heartbeats
            self._store = open_storage(settings.storage)
            # each trial's own sampler, seeded by the study seed and the trial's own number (as
            # the optuna backend does): Optuna numbers trials atomically, so two drivers asking
            # at once still get different seeds
            self._sampler = TrialSeededSampler(settings.sampler, settings.seed)
            super().__init__(
                space=_DefineByRun(space),
                metric=list(study.metric_names or OBJECTIVE_NAMES),
                mode=["max" if d == StudyDirection.MAXIMIZE else "min" for d in study.directions],
                sampler=self._sampler,
                study_name=settings.study_name,
                storage=self._store,
            )
            self._study = study  # the heartbeat-aware study: finds trials of dead processes
            self._reporter = reporter or Reporter()
            self._settings = settings
            self._study_id = self._store.get_study_id_from_name(settings.study_name)
            self._deadline = (
                None if settings.timeout is None else time.monotonic() + settings.timeout
            )
            self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
            self.stop_reason = ""  # set when a trial hits an error that stops the search
            self._streak = FailureStreak(settings.max_failures)
            self._rejections = RejectionStreak(settings.max_rejections, budget)
            self._next_poll = 0.0

        def suggest(self, trial_id: str):
            if self.stop_reason or (
                self._deadline is not None and time.monotonic() >= self._deadline
            ):
                return self.FINISHED
            if time.monotonic() < self._next_poll:
                return None
            counts = fail_stale_trials(self._study)
            if not counts.waiting and counts.done + counts.running >= self._settings.n_trials:
                if counts.running == 0:
                    return self.FINISHED
                # a running trial may yet die and be re-queued: look again in a moment
                self._next_poll = time.monotonic() + _POLL_SECONDS
                return None
            with warnings.catch_warnings():
                # TPE's own work can exceed Ray's 1 s hint for define-by-run spaces; it is not
                # training, which runs in the trainable
                warnings.filterwarnings("ignore", message="Define-by-run function")
                config = super().suggest(trial_id)
            number = config[TRIAL_KEY]
            self._numbers[trial_id] = number
            # a first heartbeat: a trial whose worker never starts goes stale and is re-queued
            self._store.record_heartbeat(self._trial_id(number))
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            pass  # intermediate results: the objective's pruner handles them

        def _check(self, streak: FailureStreak | RejectionStreak) -> None:
            """A streak that has reached its limit stops the search (the first reason stays)."""
            try:
                streak.check()
            except NasAscError as exc:
                self.stop_reason = self.stop_reason or str(exc)

        def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
            if result and result.get("state") == "ERROR" and not self.stop_reason:
                self.stop_reason = (
                    f"the search stopped at an error in trial {result[TRIAL_KEY]}: "
                    f"{result['error']}; the study keeps every finished trial, fix the cause "
                    "and re-run the same command to continue"
                )
            if result and result.get("state") in ("COMPLETE", "PRUNED", "FAIL"):
                self._streak.record(TrialState[result["state"]], result.get("reason", ""))
                self._check(self._streak)
            if error and not result:
                # the trainable itself raised (a node that cannot reach the storage or the
                # data): a failure like any other for the streak that stops a broken setup
                self._streak.record(TrialState.FAIL, "an error in the Ray trainable")
                self._check(self._streak)
            number = self._numbers.pop(trial_id, None)
            if number is None:
                return
            self._sampler.forget(number)  # the trainable told the outcome, not this sampler
            trial_id_ = self._trial_id(number)
            frozen = self._store.get_trial(trial_id_)
            if frozen.state.is_finished():  # the trainable told the outcome
                self._rejections.record(frozen)
                self._check(self._rejections)
                return
            _orphaned(self._study, self._store, trial_id_, frozen, self._settings.max_retry)
            self._reporter.message(
                f"trial {frozen.number}: its Ray worker stopped before the trial finished (node "
                "lost, killed or interrupted); re-queued"
            )

        def _trial_id(self, number: int) -> int:
            return self._store.get_trial_id_from_study_id_trial_number(self._study_id, number)

    return NasAscOptunaSearch


def _orphaned(study, store, trial_id: int, frozen: optuna.trial.FrozenTrial, max_retry: int):
    """Fail a trial whose Ray worker ended before it told its outcome, and re-queue it."""
    reason = "its Ray worker stopped before the trial finished (node lost, killed or interrupted)"
    try:
        store.set_trial_user_attr(trial_id, "status", "failed")
        store.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not store.set_trial_state_values(trial_id, TrialState.FAIL):
            return
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another process failed it first (a stale heartbeat) and re-queued it
    # the snapshot from before the failure: the retry must not inherit the failure's attributes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)(study, frozen)


class _Heartbeat:
    """Writes a running trial's heartbeat every ``interval`` seconds while in the block."""

    def __init__(self, store, trial_id: int, interval: float) -> None:
        self._store = store
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self._store.record_heartbeat(self._trial_id)
            except Exception as exc:  # a database hiccup: try again next beat, keep beating
                _LOG.warning("heartbeat of trial id %s not written: %s", self._trial_id, exc)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        # a heartbeat stuck in the database must not hold the trial's result back
        self._thread.join(timeout=self._interval)


def _ray_trial(
    config: dict, context: SearchContext, settings: SearchSettings, verbosity: int
) -> None:
    """The Ray trainable: run the Optuna trial ``config[TRIAL_KEY]`` and tell its outcome."""
    with masked_output([url_password(settings.storage)]):  # a worker prints no password either
        _run_ray_trial(config, context, settings, verbosity)


def _run_ray_trial(
    config: dict, context: SearchContext, settings: SearchSettings, verbosity: int
) -> None:
    import ray
    from ray import tune

    from nas_asc.train import accel

    # the trial's Ray CPUs are its cores (Ray does not pin workers to cores)
    accel.configure_threads(parallel_trials=1, cores=CPUS_PER_TRIAL)
    # a trial given a share of a GPU sees that GPU alone (Ray sets CUDA_VISIBLE_DEVICES)
    device = "cuda:0" if ray.get_gpu_ids() else "cpu"
    optuna.logging.set_verbosity(verbosity)  # the driver's: no Optuna INFO lines unless -v
    number = int(config[TRIAL_KEY])
    store = open_storage(settings.storage)
    study = optuna.load_study(
        study_name=settings.study_name,
        storage=store,
        sampler=TrialSeededSampler(settings.sampler, settings.seed),
    )
    trial_id = store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name(settings.study_name), number
    )
    # suggest_* on this trial returns the parameters the driver's sampler already stored
    trial = optuna.trial.Trial(study, trial_id)
    objective = Objective(context, settings.pruner, settings.runtime(device))
    try:
        with _Heartbeat(store, trial_id, settings.heartbeat):
            outcome = _run_and_tell(objective, study, trial)
    finally:
        close_storage(store)  # actors are reused: each trial's connections are closed with it
    tune.report({TRIAL_KEY: number, **outcome})


def _run_and_tell(objective: Objective, study: optuna.Study, trial: optuna.Trial) -> dict:
    """Run the objective on ``trial`` and tell the study its outcome, as ``Study.optimize`` does.

    Returns the Ray result: the three objectives (NaN where the trial has none), ``state`` and, for
    an error that stops the search, ``error``.
    """
    names = study.metric_names or OBJECTIVE_NAMES
    nan = {name: math.nan for name in names}
    try:
        values = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return {**nan, "state": "PRUNED", "error": ""}
    except Exception as exc:
        try:
            study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.StorageInternalError:
            pass  # the storage refuses writes: the trial's stale heartbeat re-queues it later
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TrialError):
            # as the optuna backend: the trial is failed (the objective reported it), the
            # study goes on
            return {**nan, "state": "FAIL", "error": "", "reason": reason}
        # the machine, the data or the storage: the search stops, the trial re-runs when it is
        # continued (as with the optuna backend)
        return _stopped(study, trial, exc)
    try:
        study.tell(trial, list(values))
    except Exception as exc:  # the storage refusing the result (a full disk at the commit)
        cause = machine_error_in(exc)
        if cause is None:
            raise
        return _stopped(study, trial, cause)
    return {**dict(zip(names, values, strict=True)), "state": "COMPLETE", "error": ""}


def _stopped(study: optuna.Study, trial: optuna.Trial, exc: BaseException) -> dict:
    """The Ray result of a trial that an error of the machine, the data or the storage stopped:
    the trial is re-queued (or, if the storage refuses that too, left to its stale heartbeat)
    and the driver stops the search with ``error``."""
    error = machine_error_text(exc)
    requeue_trial(study, trial_storage_id(trial), f"was stopped by {error}")
    nan = {name: math.nan for name in study.metric_names or OBJECTIVE_NAMES}
    return {**nan, "state": "ERROR", "error": error}
