"""Faults inside a trial (issue 7): the trial fails with its reason recorded, the study goes on.

A test-only model family, registered for this module and removed afterwards, misbehaves on
demand: its loss turns NaN or overflows, its constructor refuses the config, its layers do not
fit together, its forward pass runs out of memory while training, or it has data-dependent
control flow that FX graph-mode quantization cannot trace. A real search
(:func:`~nas_asc.search.backends.optuna.run_trials` on the tiny dataset) runs one trial of each
fault plus a healthy one and must reach its trial count with every fault recorded.
"""

from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass

import optuna
import pytest
import torch
from torch import nn

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.errors import NasAscError
from nas_asc.models import _registry
from nas_asc.search.backends import run_trials
from nas_asc.search.objective import SearchContext
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import prepare_study, retry_history, trial_counts

# "none" last: after every fault the study still trains a healthy candidate
FAULTS = ("nan", "explode", "oom", "build", "shape", "untraceable", "none")


class _Loop:
    itself: _Loop


@dataclass(frozen=True)
class FaultyConfig:
    fault: str = "none"  # which failure to produce (see FAULTS)
    width: int = 8  # conv channels


class Faulty(nn.Module):
    """Conv-BN-ReLU, global pooling, linear head: tiny, quantizable, and broken on demand."""

    def __init__(self, cfg: FaultyConfig) -> None:
        super().__init__()
        if cfg.fault == "build":
            raise ValueError(f"faulty: width must be a multiple of 3, got {cfg.width}")
        # third-party families often check their config with assert (or index a missing key)
        assert cfg.fault != "assert", f"faulty: width {cfg.width} is not supported"
        self.fault = cfg.fault
        self.body = nn.Sequential(
            nn.Conv2d(1, cfg.width, 3, padding=1, bias=False),
            nn.BatchNorm2d(cfg.width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        # "shape": the head expects more features than the body gives (a config whose layers
        # do not compose): the first forward pass, the complexity count, raises
        self.head = nn.Linear(cfg.width + (cfg.fault == "shape"), 10)
        if cfg.fault == "cycle":  # garbage in a reference cycle, as FX graphs leave behind
            loop = _Loop()
            loop.itself = loop
            Faulty.cycles.append((weakref.ref(loop), gc.get_freeze_count()))

    interrupts = 0  # "interrupt": Ctrl-C arrives during this many trainings (then none)
    # "cycle": every model built leaves garbage in a reference cycle, noted here with the garbage
    # collector's frozen count at the time
    cycles: list[tuple[weakref.ref, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fault == "interrupt" and self.training and Faulty.interrupts > 0:
            Faulty.interrupts -= 1
            raise KeyboardInterrupt
        if self.fault == "untraceable" and x.mean() > 1e9:
            # data-dependent control flow: JIT tracing (the complexity count) records one
            # branch and training runs it, but FX symbolic tracing (int8 quantization) cannot
            x = x * 0
        logits = self.head(self.body(x))
        if self.training:
            if self.fault == "nan":
                logits = logits * float("nan")
            elif self.fault == "explode":
                logits = logits * 1e38  # overflows to inf in the loss
            elif self.fault == "oom":
                raise MemoryError("faulty: cannot allocate activations for this batch")
        return logits


@pytest.fixture()
def faulty_family():
    _registry.register_model("faulty", FaultyConfig)(Faulty)
    yield "faulty"
    _registry._MODELS.pop("faulty", None)
    assert "faulty" not in _registry.list_models()


def _space() -> dict:
    return {
        "name": "faults",
        "model": "faulty",
        "fixed": {
            "frontend": {"n_mels": 32},
            "train": {"batch_size": 32, "epochs": 1, "kd_lambda": 0.0},
        },
        "dimensions": {
            "model.fault": {
                "type": "categorical",
                "choices": [*FAULTS, "assert", "interrupt", "cycle"],
            }
        },
    }


def _setup(tiny_search, tmp_path, name: str, n_trials: int, space=None, store=None, **settings):
    """The search context (random teacher logits) and settings (a SQLite study ``name`` in
    ``tmp_path``, no early stopping) that the fault tests run; no artifact store unless given:
    checkpoints would only add seconds to what most of them test."""
    context = SearchContext(
        SearchSpace.from_dict(space or _space()),
        DEFAULT_BUDGET,
        tiny_search,
        torch.randn(tiny_search.n_meta_rows, 10, generator=torch.Generator().manual_seed(0)),
        progress=False,
        artifact_store=store,
    )
    storage = f"sqlite:///{tmp_path / f'{name}.db'}"
    return context, SearchSettings(name, storage, n_trials=n_trials, pruner="none", **settings)


def _run_faults(faults, tiny_search, tmp_path):
    context, settings = _setup(tiny_search, tmp_path, "faults", len(faults))
    # one trial per fault, in this order, through the real search loop
    study = prepare_study(context, settings, data_label="tiny")
    for fault in faults:
        study.enqueue_trial({"model.fault": fault})
    return run_trials(context, settings, data_label="tiny")


# trains a trial per fault (10 s)
@pytest.mark.slow
def test_every_fault_fails_its_trial_with_a_reason_and_the_study_goes_on(
    faulty_family, tiny_search, tmp_path
):
    study = _run_faults(FAULTS, tiny_search, tmp_path)

    trials = study.get_trials(deepcopy=False)
    assert [t.params["model.fault"] for t in trials] == list(FAULTS)
    by_fault = {t.params["model.fault"]: t for t in trials}
    healthy = by_fault.pop("none")
    assert healthy.state == optuna.trial.TrialState.COMPLETE
    assert healthy.user_attrs["status"] == "trained"
    expected = {
        "nan": "loss became nan",
        "explode": "loss became inf",
        "oom": "MemoryError: faulty: cannot allocate",
        "build": "ValueError: faulty: width must be a multiple of 3",
        "shape": "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
        "untraceable": "TraceError: symbolically traced variables cannot be used",
    }
    for fault, fragment in expected.items():
        t = by_fault[fault]
        assert t.state == optuna.trial.TrialState.FAIL, fault
        assert t.user_attrs["status"] == "failed", fault
        assert fragment in t.user_attrs["fail_reason"], (fault, t.user_attrs["fail_reason"])
    # the quantization failure came after training: the fp32 model trained, int8 never existed
    assert "int8_accuracy" not in by_fault["untraceable"].user_attrs
    counts = trial_counts(study)
    assert (counts.done, counts.trained, counts.failed) == (len(FAULTS), 1, len(FAULTS) - 1)


def test_a_family_that_asserts_on_its_config_fails_only_its_trial(
    faulty_family, tiny_search, tmp_path
):
    study = _run_faults(("assert", "build", "none"), tiny_search, tmp_path)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL] * 2 + [optuna.trial.TrialState.COMPLETE]
    assert "AssertionError: faulty: width 8" in study.trials[0].user_attrs["fail_reason"]


def test_each_trials_reference_cycles_are_collected_after_it(faulty_family, tiny_search, tmp_path):
    # the objects from before the search are frozen while it runs (so each trial's collection
    # walks only what the trials made) and handed back after it
    before = gc.get_freeze_count()
    Faulty.cycles.clear()
    gc.disable()  # nothing but the search's own collections may free the cycles
    try:
        study = _run_faults(("cycle", "cycle"), tiny_search, tmp_path)
        left = gc.get_freeze_count()
        freed = [ref() is None for ref, _ in Faulty.cycles]  # before the collector is back on
    finally:
        gc.enable()
    assert [t.user_attrs["status"] for t in study.trials] == ["trained", "trained"]
    assert Faulty.cycles and all(count > before for _, count in Faulty.cycles)
    assert freed and all(freed)
    assert left == before


def test_what_the_caller_froze_stays_frozen(faulty_family, tiny_search, tmp_path):
    gc.freeze()  # a process that manages the collector itself
    try:
        study = _run_faults(("none",), tiny_search, tmp_path)
        left = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert study.trials[0].user_attrs["status"] == "trained"
    assert left > 0


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_failure_after_failure_stops_the_search_with_the_last_reason(
    faulty_family, tiny_search, tmp_path
):
    """A setup that fails every trial (here: every candidate overflows) is not searched to the
    end: ``max_failures`` failed trials in a row stop it with one clear error."""
    space = {**_space(), "dimensions": {"model.width": {"type": "int", "low": 4, "high": 12}}}
    space["fixed"] = {**space["fixed"], "model": {"fault": "explode"}}
    context, settings = _setup(tiny_search, tmp_path, "streak", 20, space, max_failures=3)
    with pytest.raises(
        NasAscError,
        match=r"3 trials in a row failed, the last with "
        r"TrainingDiverged: loss became inf.*run the same command again",
    ):
        run_trials(context, settings, data_label="tiny")
    study = optuna.load_study(study_name="streak", storage=settings.storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3


def test_an_error_of_the_machine_stops_the_search_at_once(faulty_family, tiny_search, tmp_path):
    """An OSError (disk full, a folder gone) would meet every trial: it is not a trial failure."""
    from nas_asc.search.artifacts import open_artifact_store

    store = open_artifact_store(tmp_path / "artifacts")
    (tmp_path / "artifacts").rmdir()
    (tmp_path / "artifacts").write_text("the folder replaced by a file mid-search")
    context, settings = _setup(tiny_search, tmp_path, "os", 3, store=store)
    study = prepare_study(context, settings, data_label="tiny")
    study.enqueue_trial({"model.fault": "none"})
    with pytest.raises(OSError):
        run_trials(context, settings, data_label="tiny")
    # not the candidate's fault: the trial is re-queued (same parameters), not failed for good
    stopped, queued = optuna.load_study(study_name="os", storage=settings.storage).trials
    assert stopped.state == optuna.trial.TrialState.FAIL
    assert list(queued.user_attrs) == ["requeued_after"]  # none of the stopped run's figures
    assert queued.user_attrs["requeued_after"].startswith(
        ("trial 0 was stopped by NotADirectoryError", "trial 0 was stopped by FileExistsError")
    )
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.params == stopped.params
    assert retry_history(queued) == [stopped.number]
    counts = trial_counts(optuna.load_study(study_name="os", storage=settings.storage))
    assert (counts.done, counts.retried, counts.waiting) == (0, 1, 1)


def test_an_interrupt_requeues_the_running_trial_and_the_rerun_finishes(
    faulty_family, tiny_search, tmp_path
):
    """Ctrl-C (KeyboardInterrupt; the CLI turns SIGTERM into one too) in the middle of a
    trial: the trial is re-queued with its parameters and seed, and the continued search ends
    with the requested number of finished trials, none left running."""
    Faulty.interrupts = 1
    context, settings = _setup(tiny_search, tmp_path, "ctrl-c", 2, seed=3)
    study = prepare_study(context, settings, data_label="tiny")
    study.enqueue_trial({"model.fault": "interrupt"})
    with pytest.raises(KeyboardInterrupt):
        run_trials(context, settings, data_label="tiny")
    study = optuna.load_study(study_name="ctrl-c", storage=settings.storage)
    stopped, queued = study.trials
    assert stopped.state == optuna.trial.TrialState.FAIL
    assert queued.user_attrs["requeued_after"] == "trial 0 was interrupted (Ctrl-C or SIGTERM)"
    assert (queued.state, queued.params) == (optuna.trial.TrialState.WAITING, stopped.params)
    assert trial_counts(study).done == 0

    study = run_trials(context, settings, data_label="tiny")
    counts = trial_counts(study)
    assert (counts.done, counts.trained, counts.retried) == (2, 2, 1)
    assert counts.running == counts.waiting == counts.failed == 0
    retry = study.trials[1]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.user_attrs["seed"] != study.trials[2].user_attrs["seed"]
    assert "fail_reason" not in retry.user_attrs


def test_a_database_locked_past_its_timeout_stops_the_search_and_requeues(
    faulty_family, tiny_search, tmp_path, monkeypatch
):
    """Another process holds the SQLite study's write lock longer than the busy timeout while a
    trial records its results: not the candidate's fault, so the search stops and the trial is
    re-queued; the continued search finishes it."""
    import sqlite3

    import nas_asc.search.study as study_module
    from nas_asc.search.objective import Objective

    monkeypatch.setattr(study_module, "SQLITE_BUSY_TIMEOUT", 0.2)
    context, settings = _setup(tiny_search, tmp_path, "locked", 1)
    record = Objective.record

    def record_while_locked(self, trial, *args):
        holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # a real lock, released once the write has failed
        try:
            return record(self, trial, *args)
        finally:
            holder.rollback()
            holder.close()

    monkeypatch.setattr(Objective, "record", record_while_locked)
    prepare_study(context, settings, data_label="tiny").enqueue_trial({"model.fault": "none"})
    with pytest.raises(optuna.exceptions.StorageInternalError):
        run_trials(context, settings, data_label="tiny")
    study = optuna.load_study(study_name="locked", storage=settings.storage)
    stopped, queued = study.trials
    assert stopped.state == optuna.trial.TrialState.FAIL
    assert queued.state == optuna.trial.TrialState.WAITING
    assert queued.user_attrs["requeued_after"] == (
        "trial 0 was stopped by OperationalError: (sqlite3.OperationalError) database is locked"
    )

    monkeypatch.setattr(Objective, "record", record)
    counts = trial_counts(run_trials(context, settings, data_label="tiny"))
    assert (counts.done, counts.trained, counts.retried, counts.failed) == (1, 1, 1, 0)


def test_the_cli_reports_a_failing_database_in_one_line(monkeypatch, capsys):
    import sqlite3

    from nas_asc import cli

    def locked(args):
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised") from exc

    monkeypatch.setitem(cli._COMMANDS, "report", locked)
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    assert cli.main(["report", "--study", "s"]) == 2
    assert capsys.readouterr().err == (
        "nas-asc: error: the study's database failed (OperationalError: database is locked); "
        "run the command again once the database is free (not locked, its disk not full)\n"
    )


def test_a_full_disk_while_saving_a_checkpoint_requeues_the_trial(
    faulty_family, tiny_search, tmp_path, monkeypatch
):
    """The checkpoint is written to /dev/full (a real ENOSPC): torch's RuntimeError is the
    write's OSError again, so the search stops and the trial is re-queued, not failed for
    good; with room again, the continued search completes it."""
    import nas_asc.search.artifacts as artifacts
    from nas_asc.search.artifacts import open_artifact_store

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this platform")
    store = open_artifact_store(tmp_path / "artifacts")
    context, settings = _setup(tiny_search, tmp_path, "full", 1, store=store)
    prepare_study(context, settings, data_label="tiny").enqueue_trial({"model.fault": "none"})
    room = artifacts._checkpoint_file
    monkeypatch.setattr(artifacts, "_checkpoint_file", lambda folder, number: "/dev/full")
    with pytest.raises(OSError, match="No space left on device") as raised:
        run_trials(context, settings, data_label="tiny")
    assert raised.value.filename == "/dev/full"
    study = optuna.load_study(study_name="full", storage=settings.storage)
    stopped, queued = study.trials
    assert "fail_reason" not in stopped.user_attrs
    assert queued.user_attrs["requeued_after"] == (
        "trial 0 was stopped by OSError: [Errno 28] No space left on device: '/dev/full'"
    )

    monkeypatch.setattr(artifacts, "_checkpoint_file", room)
    counts = trial_counts(run_trials(context, settings, data_label="tiny"))
    assert (counts.done, counts.trained, counts.retried, counts.failed) == (1, 1, 1, 0)
    assert study.trials[1].user_attrs.get("checkpoint_artifact")


def test_a_storage_error_in_optunas_own_bookkeeping_requeues_the_trial(
    faulty_family, tiny_search, tmp_path, monkeypatch
):
    """The study database fills up as Optuna records a finished trial: Optuna raises
    ``AssertionError("Should not reach.")`` on top of the storage error and leaves the trial
    RUNNING. The search stops with the storage error itself, and the trial is re-queued."""
    import sqlite3

    from optuna.study import _optimize

    from nas_asc.search.artifacts import open_artifact_store

    artifacts = tmp_path / "artifacts"
    store = open_artifact_store(artifacts)
    context, settings = _setup(
        tiny_search, tmp_path, "tell", 1, store=store, artifact_dir=artifacts
    )
    prepare_study(context, settings, data_label="tiny").enqueue_trial({"model.fault": "none"})
    tell = _optimize._tell_with_warning

    def full_disk_at_commit(**kwargs):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised") from exc

    monkeypatch.setattr(_optimize, "_tell_with_warning", full_disk_at_commit)
    with pytest.raises(optuna.exceptions.StorageInternalError) as raised:
        run_trials(context, settings, data_label="tiny")
    # the storage error keeps the driver's error under it: the one line the CLI prints says why
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    stopped, queued = optuna.load_study(study_name="tell", storage=settings.storage).trials
    # the stopped trial had uploaded its checkpoint and image: they went with it
    assert sum(k.startswith("artifacts:") for k in stopped.system_attrs) == 2
    assert list(artifacts.iterdir()) == []
    assert (stopped.state, queued.state) == (
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.WAITING,
    )
    assert queued.user_attrs["requeued_after"] == (
        "trial 0 was stopped by OperationalError: database or disk is full"
    )

    monkeypatch.setattr(_optimize, "_tell_with_warning", tell)
    study = run_trials(context, settings, data_label="tiny")
    counts = trial_counts(study)
    assert (counts.done, counts.trained, counts.retried, counts.running) == (1, 1, 1, 0)
    done = study.trials[1].user_attrs
    assert {p.name for p in artifacts.iterdir()} == {
        done["checkpoint_artifact"],
        done["confusion_artifact"],
    }


def test_a_heartbeat_the_database_refuses_is_skipped_not_fatal(tmp_path, monkeypatch):
    """Optuna's heartbeat thread dies at its first failed write (printing a traceback) and
    leaves a live trial without heartbeats; nas-asc's storage skips that beat instead."""
    from nas_asc.search.study import open_storage

    store = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat=1)
    study = optuna.create_study(storage=store, study_name="hb")
    trial = study.ask()
    beats = []

    def refused(self, trial_id):
        beats.append(trial_id)
        raise optuna.exceptions.StorageInternalError("database or disk is full")

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", refused)
    store.record_heartbeat(trial._trial_id)  # no exception: the next beat follows
    assert beats == [trial._trial_id]
