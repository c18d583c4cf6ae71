"""The ``optuna`` search backend (the embedded default): trials run by Optuna in this process.

The study itself (storage, objectives, what it records) is :mod:`nas_asc.search.study`; the
sampler is seeded per trial (:class:`~nas_asc.search.samplers.TrialSeededSampler`).

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
import ctypes
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import optuna

from nas_asc.errors import NasAscError, interrupts_once
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
from nas_asc.search.study import (
    fail_stale_trials,
    open_study,
    prepare_study,
    requeue_trial,
    trial_counts,
)
from nas_asc.study.storage import is_sqlite, scrub

__all__ = ["OptunaBackend", "optimize"]

_LOG = logging.getLogger(__name__)


@BACKENDS.register("optuna")
class OptunaBackend(SearchBackend):
    """Trials in this process, or in ``settings.workers`` processes sharing a database server.

    Re-running the same study continues it: completed trials are kept, trials left ``RUNNING``
    by a killed worker are detected by their stale heartbeat and re-queued with the same
    parameters and seed. More workers can join from other machines with the same command.
    """

    name = "optuna"

    def check(self, settings: SearchSettings) -> None:
        """Refuse parallel workers on SQLite, pointing to PostgreSQL or Ray, and a device or
        GPUs this machine does not have."""
        settings.worker_devices()
        if settings.workers > 1 and is_sqlite(settings.storage):
            raise NasAscError(
                f"{settings.workers} parallel workers need a database server: SQLite serialises "
                "every write and locks up under concurrent trials. Pass --storage "
                "postgresql://USER@HOST/DB (pip install 'psycopg[binary]'), or use --backend ray "
                "--workers N, or run with --workers 1"
            )

    def run(
        self,
        context: SearchContext,
        settings: SearchSettings,
        data_label: str,
        data_info: dict | None = None,
    ) -> optuna.Study:
        self.check(settings)
        study = prepare_study(context, settings, data_label, data_info)
        counts = trial_counts(study)
        if already_done(counts, settings, context.reporter):
            return study
        context.reporter.search_started(settings.n_trials, counts.done)
        devices = settings.worker_devices()  # CUDA asked for and missing: one line, no work
        if settings.workers == 1:
            from nas_asc.train import accel

            accel.configure_threads(parallel_trials=1)  # the share that adapting lowers
            optimize(study, context, settings, device=devices[0])
            return study
        spawn = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        stop = spawn.Event()  # set by a worker whose error ends the search: the others stop too
        errors = spawn.Queue()  # the one-line reason of each worker that stopped at an error
        procs = [
            spawn.Process(
                target=_worker_main,
                args=(
                    context,
                    settings,
                    worker,
                    devices[worker],
                    stop,
                    errors,
                    optuna.logging.get_verbosity(),
                ),
                name=f"nas-asc-worker-{worker}",
            )
            for worker in range(settings.workers)
        ]
        try:
            with _interrupts_held():
                for p in procs:
                    p.start()
            for p in procs:
                p.join()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every worker re-queues its trial, exits
            started = [p for p in procs if p.pid is not None]
            for p in started:
                if p.is_alive():
                    p.terminate()  # SIGTERM: the worker takes it as an interrupt
            for p in started:
                p.join(60)
            raise
        reasons = []
        while not errors.empty():
            reasons.append(errors.get())
        failed = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
        if reasons or failed:
            why = reasons[0] if reasons else f"worker processes failed: {', '.join(failed)}"
            raise NasAscError(
                f"{why}; the study keeps every finished trial, re-run the same command to continue"
            )
        return open_study(settings.study_name, settings.storage)


def _worker_main(
    context: SearchContext,
    settings: SearchSettings,
    worker: int,
    device: str,
    stop,
    errors,
    verbosity: int,
):
    """One worker process on ``device``: trials until the study is done, another worker stops,
    its parent dies, or an error.

    Ctrl-C reaches every process of the terminal's group. The worker starts with SIGINT blocked
    (the parent held it back while starting the workers, and the mask is inherited), so one that
    arrives while Python starts and the arguments are unpickled (imports of seconds) waits until
    the handlers are in place and then stops the worker in silence, as it would a moment later;
    SIGTERM (the parent stopping it) ends a worker that is not set up yet at once, silently.
    """
    try:
        with interrupts_once():  # as in the parent: the running trial re-queued at once
            _exit_with_parent()
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            with masked_output([url_password(settings.storage)]):  # no password printed either
                _worker_body(context, settings, worker, device, stop, errors, verbosity)
    except KeyboardInterrupt:  # its trial was re-queued; the parent prints the one line
        raise SystemExit(130) from None


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back in the block and raised as it ends, never in the middle of
    starting a process (a worker half started, with its arguments half written, would print an
    UnpicklingError). Processes started in the block begin with SIGINT blocked: the mask of the
    thread that starts them is inherited (see :func:`_worker_main`)."""
    held: list[int] = []

    def hold(signum, frame) -> None:  # Python runs signal handlers in the main thread
        held.append(signum)

    try:
        previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: an embedding application's handlers stay
        previous = {}
    blocking = hasattr(signal, "pthread_sigmask") and bool(previous)  # not on Windows
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if blocking else None
    try:
        yield
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending now goes to `hold`
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])  # to the handler it was meant for, now


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_ORPHAN_GRACE = 30.0  # seconds an orphaned worker has to re-queue its trial before it is ended


def _exit_with_parent() -> None:
    """End this worker when the process that started it dies (``kill -9`` of nas-asc), instead of
    training on and printing to the terminal.

    The worker gets SIGTERM, which it takes as an interrupt: its running trial is re-queued and
    it exits. On Linux the kernel sends it (``prctl(PR_SET_PDEATHSIG)``); everywhere, and for a
    parent that died before that was set, a thread watches the pipe the parent holds open and
    sends it. Should the re-queueing hang (an unreachable database), the thread ends the process
    after ``_ORPHAN_GRACE`` seconds; a trial left ``RUNNING`` is re-queued by its stale heartbeat.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing: nothing to watch
        return
    threading.Thread(
        target=_stop_when_gone, args=(parent.sentinel,), name="nas-asc-parent-watch", daemon=True
    ).start()


def _stop_when_gone(sentinel) -> None:
    multiprocessing.connection.wait([sentinel])  # ready when the parent's end of the pipe closes
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(_ORPHAN_GRACE)
    os._exit(130)


def _worker_body(context, settings, worker, device, stop, errors, verbosity: int) -> None:
    from nas_asc.train import accel

    optuna.logging.set_verbosity(verbosity)  # a spawned process starts at Optuna's default

    # each worker its share of the cores: more threads per process only oversubscribe the CPU
    accel.configure_threads(parallel_trials=settings.workers)
    try:
        study = open_study(
            settings.study_name,
            settings.storage,
            heartbeat=settings.heartbeat,
            max_retry=settings.max_retry,
        )
        optimize(study, context, settings, stop=stop, device=device)
    except Exception as exc:  # reported by the parent in one line; the other workers stop
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = scrub(message, settings.storage)  # a driver's error may quote the URL
        errors.put(f"worker {worker}: {type(exc).__name__}: {message}")
        stop.set()
        raise SystemExit(1) from None


def optimize(
    study: optuna.Study,
    context: SearchContext,
    settings: SearchSettings,
    stop=None,
    device: str = "cpu",
) -> None:
    """Run trials in this process on ``device`` until the study has ``settings.n_trials`` done,
    or until ``stop`` (a ``multiprocessing.Event``, from another worker that hit an error) is
    set.

    Re-queued trials (a dead worker's) run first. Each trial gets a fresh sampler seeded from the
    study seed and the trial's number, so a study that was interrupted and continued samples what
    an uninterrupted one would have, given the same finished trials.
    """
    objective = Objective(context, settings.pruner, settings.runtime(device))
    study.sampler = TrialSeededSampler(settings.sampler, settings.seed)
    streaks = (
        FailureStreak(settings.max_failures),
        RejectionStreak(settings.max_rejections, context.budget),
    )
    with _failed_trial_logs_dropped(), _objects_from_before_frozen():
        _optimize_loop(study, objective, settings, streaks, stop)


@contextlib.contextmanager
def _objects_from_before_frozen() -> Iterator[None]:
    """Keep the collection after each trial (``gc_after_trial``: a trial's models hold reference
    cycles) to what the trials made.

    A full collection walks every object the process holds (torch's modules, the features, the
    teacher): about a second per trial in a large process. Objects that exist before the first
    trial go to the permanent generation (``gc.freeze``) after one full collection, so each
    trial's collection walks only newer objects; they are handed back on the way out. A process
    that froze objects of its own keeps its state: nothing is frozen or handed back then.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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


def _optimize_loop(study, objective, settings: SearchSettings, streaks, stop) -> None:
    started = time.monotonic()
    while stop is None or not stop.is_set():
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            break
        counts = fail_stale_trials(study)  # a dead worker's trials are re-queued
        # --trials N is N trials in all: a queued trial (a reference, or a stopped trial's copy,
        # which replaces one that does not count) starts only where one is still missing
        if counts.done >= settings.n_trials:
            break
        if counts.done + counts.running >= settings.n_trials:
            # the last trials run elsewhere: wait until they finish, or until their worker is
            # found dead and they are re-queued here
            time.sleep(min(settings.heartbeat, 5))
            continue
        objective.trial_id = None
        try:
            study.optimize(
                objective,
                n_trials=1,
                catch=(TrialError,),  # the trial is failed with its reason; the study goes on
                callbacks=list(streaks),
                gc_after_trial=True,
            )
        except BaseException as exc:
            # Ctrl-C, or the machine, the data or the storage failing (also under an error of
            # Optuna's own bookkeeping): not the candidate's fault, so the trial runs again (same
            # parameters and seed) when the search is continued
            cause = exc if isinstance(exc, KeyboardInterrupt) else machine_error_in(exc)
            if cause is None:
                raise
            if objective.trial_id is not None:
                requeue_trial(study, objective.trial_id, _interruption(cause))
            if cause is exc:
                raise
            raise cause from cause.__cause__  # its own cause kept: the driver's text is there
        for streak in streaks:
            streak.check()


def _interruption(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "was interrupted (Ctrl-C or SIGTERM)"
    return f"was stopped by {machine_error_text(exc)}"
