"""Ray Tune backend (issue 5): the same space, objective and budget gate, the same Optuna study.

The searcher (Ray's ``OptunaSearch`` subclass) and the trainable's outcome handling are tested
without starting Ray. Two tests start a real local Ray instance with two workers (about 25 s each
on an idle 2-core machine): one through ``run_ray_search``, one through ``nas-asc search --backend
ray`` continuing a study the optuna backend began.
"""

from __future__ import annotations

import math
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch
from toydata import artifact_context

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.cli import main
from nas_asc.errors import NasAscError
from nas_asc.search.backends.ray import (
    TRIAL_KEY,
    _run_and_tell,
    _searcher_class,
    require_ray,
    run_ray_search,
)
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective
from nas_asc.search.pruning import DominancePruner
from nas_asc.search.settings import SearchSettings
from nas_asc.search.study import open_study, retry_history, trial_counts

# width 96 is over the 128,000-byte budget (counted, recorded infeasible, never trained)
SPACE = {
    "name": "tiny-ray",
    "model": "tfsepnet",
    "fixed": {"frontend": {"n_mels": 32}, "train": {"batch_size": 32, "lr": 0.02, "epochs": 1}},
    "dimensions": {
        "model.width": {"type": "categorical", "choices": [8, 12, 96]},
        "train.kd_lambda": {"type": "float", "low": 0.0, "high": 0.5},
    },
}
OVER_BUDGET = {"model.width": 96, "train.kd_lambda": 0.1}

SPACE_YAML = """
name: tiny-ray-cli
model: tfsepnet
fixed:
  frontend: {n_mels: 32}
  train: {batch_size: 32, lr: 0.02}
dimensions:
  model.width: {type: int, low: 8, high: 12, step: 4}
  train.epochs: {type: int, low: 1, high: 3}
  train.kd_lambda: {type: float, low: 0.0, high: 0.5}
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_ray_is_imported_only_by_a_ray_search_and_its_absence_is_one_clear_error():
    r = _python(
        "import sys\n"
        "import nas_asc, nas_asc.cli, nas_asc.search.backends.optuna, nas_asc.search.backends.ray\n"
        "print('ray' in sys.modules)\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from nas_asc.search.backends.ray import require_ray, run_ray_search\n"
        "for call in (require_ray, lambda: run_ray_search(None, None, 'x')):\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    assert r.returncode == 0, r.stderr
    imported, *errors = r.stdout.strip().splitlines()
    assert imported == "False"  # importing nas-asc never imports Ray
    assert len(errors) == 2
    for line in errors:
        assert line.startswith("NasAscError --backend ray needs Ray Tune")
        assert "pip install 'ray[tune]'" in line
    require_ray()  # installed here: no error


# --- the searcher and the trainable's outcome, without starting Ray -----------------------------


@pytest.fixture()
def context(tiny_search, tmp_path):
    return artifact_context(tiny_search, SPACE, tmp_path / "artifacts")


def _settings(tmp_path, n_trials: int, **kwargs) -> SearchSettings:
    return SearchSettings("s", f"sqlite:///{tmp_path / 's.db'}", n_trials, **kwargs)


def _searcher(context, settings):
    study = open_study(settings.study_name, settings.storage, create=True, heartbeat=30)
    return study, _searcher_class(OptunaSearch)(study, context.space, settings)


def test_the_searcher_asks_the_shared_study_and_stops_at_the_trial_count(context, tmp_path):
    settings = _settings(tmp_path, n_trials=2)
    study, searcher = _searcher(context, settings)
    config = searcher.suggest("ray-a")
    assert config[TRIAL_KEY] == 0 and config["model.width"] in (8, 12, 96)
    # the Ray trial runs the Optuna trial the searcher asked: same number, same parameters
    running = study.get_trials()[0]
    assert running.state == TrialState.RUNNING
    assert running.params == {k: v for k, v in config.items() if k != TRIAL_KEY}
    assert searcher.suggest("ray-b")[TRIAL_KEY] == 1
    # two asked for, two running: wait (one may yet die and be re-queued) instead of finishing
    assert searcher.suggest("ray-c") is None
    for number in (0, 1):
        study.tell(number, [0.5, 1e6, 1e4])
    searcher.on_trial_complete("ray-a", {TRIAL_KEY: 0, "state": "COMPLETE"})
    searcher.on_trial_complete("ray-b", {TRIAL_KEY: 1, "state": "COMPLETE"})
    searcher._next_poll = 0.0  # the one-second pause between looks at the study
    assert searcher.suggest("ray-d") == searcher.FINISHED
    # the searcher's tell was skipped: the values the trainable told are kept
    assert [t.values for t in study.get_trials()] == [[0.5, 1e6, 1e4]] * 2


def test_a_trial_whose_worker_died_is_failed_and_requeued_with_its_parameters(context, tmp_path):
    settings = _settings(tmp_path, n_trials=1, max_retry=1)
    study, searcher = _searcher(context, settings)
    first = searcher.suggest("ray-a")
    # the Ray worker died: Tune reports an error and the Optuna trial was never told
    searcher.on_trial_complete("ray-a", None, error=True)
    dead = study.get_trials()[0]
    assert dead.state == TrialState.FAIL
    assert "Ray worker stopped" in dead.user_attrs["fail_reason"]
    counts = trial_counts(study)
    assert (counts.retried, counts.waiting, counts.done) == (1, 1, 0)
    retry = searcher.suggest("ray-b")  # the re-queued copy runs next, with the same parameters
    assert retry[TRIAL_KEY] == 1
    assert {k: retry[k] for k in first if k != TRIAL_KEY} == {
        k: v for k, v in first.items() if k != TRIAL_KEY
    }
    assert "fail_reason" not in study.get_trials()[1].user_attrs  # not inherited by the retry
    searcher.on_trial_complete("ray-b", None, error=True)  # out of retries: failed for good
    assert trial_counts(study).failed == 1
    assert searcher.suggest("ray-c") == searcher.FINISHED


def test_an_error_that_stops_the_search_stops_asking(context, tmp_path):
    settings = _settings(tmp_path, n_trials=5)
    study, searcher = _searcher(context, settings)
    searcher.suggest("ray-a")
    study.tell(0, state=TrialState.FAIL)
    searcher.on_trial_complete(
        "ray-a", {TRIAL_KEY: 0, "state": "ERROR", "error": "OSError: disk full"}
    )
    assert searcher.stop_reason.startswith("the search stopped at an error in trial 0: OSError")
    assert searcher.suggest("ray-b") == searcher.FINISHED


def test_failure_after_failure_stops_asking(context, tmp_path):
    settings = _settings(tmp_path, n_trials=9, max_failures=2)
    study, searcher = _searcher(context, settings)
    for k, ray_id in enumerate(("ray-a", "ray-b")):
        searcher.suggest(ray_id)
        study.tell(k, state=TrialState.FAIL)
        result = {TRIAL_KEY: k, "state": "FAIL", "error": "", "reason": "KeyError: 'x'"}
        searcher.on_trial_complete(ray_id, result)
    assert searcher.stop_reason.startswith("2 trials in a row failed, the last with KeyError")
    assert searcher.suggest("ray-c") == searcher.FINISHED


def test_trainables_that_crash_count_as_failures_too(context, tmp_path):
    """A trainable that raises (a node without the data) reports no result, only error=True."""
    settings = _settings(tmp_path, n_trials=9, max_failures=2, max_retry=0)
    study, searcher = _searcher(context, settings)
    for ray_id in ("ray-a", "ray-b"):
        searcher.suggest(ray_id)
        searcher.on_trial_complete(ray_id, None, error=True)
    assert searcher.stop_reason.startswith("2 trials in a row failed")
    assert searcher.suggest("ray-c") == searcher.FINISHED


def test_a_timeout_stops_starting_trials(context, tmp_path):
    _, searcher = _searcher(context, _settings(tmp_path, n_trials=5, timeout=1e-9))
    assert searcher.suggest("ray-a") == searcher.FINISHED


def _memory_study():
    return optuna.create_study(directions=list(DIRECTIONS))


@pytest.mark.slow  # trains through Ray's trial function (14 s)
def test_outcomes_are_told_as_the_optuna_backend_tells_them(context, tmp_path):
    study = _memory_study()
    study.enqueue_trial(OVER_BUDGET)
    study.enqueue_trial({"model.width": 8, "train.kd_lambda": 0.2})
    infeasible = _run_and_tell(Objective(context), study, study.ask())
    assert infeasible["state"] == "COMPLETE" and infeasible["int8_accuracy"] == 0.0
    trained = _run_and_tell(Objective(context), study, study.ask())
    assert trained["state"] == "COMPLETE"
    t0, t1 = study.get_trials()
    assert t0.state == t1.state == TrialState.COMPLETE
    assert t0.user_attrs["status"] == "infeasible" and t0.constraints["param_bytes"] > 0
    assert t1.values == [trained[name] for name in OBJECTIVE_NAMES]

    # stopped early by the dominance pruner: PRUNED, with its last accuracy
    for _ in range(3):  # peers at no more complexity, far more accurate after epoch 1
        study.add_trial(
            optuna.trial.create_trial(
                values=[1.0, 1.0, 1.0],
                user_attrs={"epoch_accuracy": [1.0], "macs": 1, "param_bytes": 1},
            )
        )
    study.enqueue_trial({"model.width": 8, "train.kd_lambda": 0.2})
    # two epochs: the pruner never stops a trial after its last one
    two_epochs = {**SPACE["fixed"], "train": {**SPACE["fixed"]["train"], "epochs": 2}}
    longer = artifact_context(context.dataset, {**SPACE, "fixed": two_epochs}, tmp_path / "a1")
    objective = Objective(longer, DominancePruner(min_epochs=1))
    pruned = _run_and_tell(objective, study, study.ask())
    last = study.get_trials()[-1]
    assert pruned["state"] == "PRUNED" and math.isnan(pruned["int8_accuracy"])
    assert last.state == TrialState.PRUNED and last.user_attrs["status"] == "pruned"
    assert "last_accuracy" in last.user_attrs

    # an error in the candidate (a model that does not build): FAIL with its reason, search goes on
    bad = artifact_context(
        context.dataset,
        {**SPACE, "fixed": {**SPACE["fixed"], "model": {"block": "nope"}}},
        tmp_path / "a2",
    )
    failed = _run_and_tell(Objective(bad), study, study.ask())
    last = study.get_trials()[-1]
    assert failed["state"] == "FAIL" and failed["error"] == ""
    assert last.state == TrialState.FAIL and "nope" in last.user_attrs["fail_reason"]

    # an error outside the trial (the artifact folder became a file): it stops the search, and
    # the trial (not its candidate's fault) is failed and re-queued to run again
    broken = artifact_context(context.dataset, SPACE, tmp_path / "a3")
    (tmp_path / "a3").rmdir()
    (tmp_path / "a3").write_text("the folder replaced by a file mid-search")
    study.enqueue_trial({"model.width": 8, "train.kd_lambda": 0.2})
    stopped = _run_and_tell(Objective(broken), study, study.ask())
    assert stopped["state"] == "ERROR" and "NotADirectoryError" in stopped["error"]
    *_, told, queued = study.get_trials()
    assert told.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert queued.params == told.params and retry_history(queued) == [told.number]
    assert "was stopped by NotADirectoryError" in queued.user_attrs["requeued_after"]

    # the storage refuses the finished trial's result (a full disk at the commit): the search
    # stops with the driver's error and the trial is re-queued, not left running
    import sqlite3

    tell = study.tell

    def full_at_commit(trial, values=None, **kwargs):
        if values is None:
            return tell(trial, values, **kwargs)
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised") from exc

    study.tell = full_at_commit
    unsaved = _run_and_tell(Objective(context), study, study.ask())  # runs the re-queued copy
    assert unsaved["state"] == "ERROR"
    assert unsaved["error"] == "OperationalError: database or disk is full"
    *_, told, requeued = study.get_trials()
    assert told.number == queued.number and told.state == TrialState.FAIL
    assert requeued.state == TrialState.WAITING and requeued.params == told.params


# --- run_ray_search and the CLI: a real local Ray instance with two workers ---------------------


@pytest.mark.slow  # a local Ray instance with two workers (as the Ray case of test_backends.py)
def test_ray_search_fills_the_same_study_as_the_optuna_backend(context, tmp_path):
    import ray

    from nas_asc.report.pareto import write_report

    artifacts = str(tmp_path / "artifacts")
    settings = _settings(tmp_path, n_trials=4, workers=2, pruner="none", artifact_dir=artifacts)
    # one candidate over budget, queued first: the budget gate runs inside the Ray trial
    open_study("s", settings.storage, create=True).enqueue_trial(OVER_BUDGET)

    study = run_ray_search(context, settings, "tiny", {"root": "r", "fingerprint": "f"})

    assert not ray.is_initialized()  # the local Ray it started is shut down
    assert study.metric_names == list(OBJECTIVE_NAMES)
    assert study.user_attrs["space"] == "tiny-ray" and study.user_attrs["data"] == "tiny"
    assert study.user_attrs["budget"] == DEFAULT_BUDGET.to_dict()
    trials = study.get_trials()
    # the over-budget proposal is rejected untrained and takes no slot: four trained
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    over = trials[0]
    assert over.user_attrs["status"] == "infeasible" and over.params == OVER_BUDGET
    assert over.constraints["param_bytes"] > 0 and "int8_accuracy" not in over.user_attrs
    for t in trials[1:]:
        a = t.user_attrs
        assert a["status"] == "trained" and a["config"]["model"]["width"] in (8, 12)
        assert t.values == [a["int8_accuracy"], a["macs"], a["param_bytes"]]
        assert set(a["accuracy_by_device"]) == {"a", "b", "c", "s1", "s2", "s3"}  # validation
        assert all(v <= 0 for v in t.constraints.values())
        assert "checkpoint_artifact" in a  # the workers wrote to the study's artifact store
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two Ray workers shared the work

    paths = write_report(study, tmp_path / "report")
    assert paths.index_html.is_file() and paths.pareto_csv.is_file()
    assert len(paths.trials_csv.read_text().strip().splitlines()) == 1 + 5

    # re-running continues to the trial count: nothing left to do, so Ray is not even started
    again = run_ray_search(context, settings, "tiny")
    assert len(again.get_trials()) == 5 and not ray.is_initialized()


@pytest.fixture()
def warm_teacher(tiny_search):
    """Train the tiny dataset's teacher once, outside the timed search."""
    from nas_asc.train.teacher import get_teacher

    get_teacher(tiny_search, progress=False)


@pytest.mark.slow  # two CLI searches, one of them on a local Ray instance
def test_cli_ray_backend_continues_a_study_the_optuna_backend_began(
    tiny_root, warm_teacher, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # relative paths below, as a user would type them
    (tmp_path / "space.yaml").write_text(SPACE_YAML)
    common = ["--space", "space.yaml", "--data", str(tiny_root), "--storage", "sqlite:///s.db"]
    common += ["--epochs", "2", "--pruner", "none"]
    assert main(["-q", "search", *common, "--trials", "1"]) == 0
    ray_args = ["--trials", "3", "--backend", "ray", "--workers", "2"]
    assert main(["-q", "search", *common, *ray_args]) == 0
    out = capsys.readouterr().out
    assert (
        "3 trials (3 trained, 0 stopped early, 0 failed; 0 proposals over budget rejected "
        "untrained)" in out
    )

    study = optuna.load_study(study_name="tiny-ray-cli", storage="sqlite:///s.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert t.user_attrs["config"]["train"]["epochs"] <= 2
        assert 0.0 <= t.user_attrs["int8_accuracy"] <= 1.0
    # the relative artifact folder and report folder resolve where the command ran
    assert len(list((tmp_path / "tiny-ray-cli" / "artifacts").rglob("*"))) >= 6
    assert (tmp_path / "reports" / "tiny-ray-cli" / "index.html").is_file()
    # the optuna backend's trial ran in this process, the Ray ones in Ray workers
    assert trials[0].user_attrs["worker"] != trials[1].user_attrs["worker"]
    # the front was measured on the test fold once the Ray search ended (trial 0 also when the
    # first search ended, which it may since have left)
    measured = {t.number for t in trials if "test_int8_accuracy" in t.user_attrs}
    assert {t.number for t in study.best_trials} <= measured

    # the reports' final protocol works on a study the Ray backend filled
    ray_trial = trials[1].number  # run by a Ray worker
    argv = ["-q", "evaluate", "--study", "tiny-ray-cli", "--storage", "sqlite:///s.db"]
    assert main([*argv, "--seeds", "1", "--trials", str(ray_trial)]) == 0
    evaluated = optuna.load_study(study_name="tiny-ray-cli", storage="sqlite:///s.db")
    assert evaluated.trials[ray_trial].user_attrs["evaluation"]["seeds"] == 1


def test_ray_search_refuses_a_cluster_it_cannot_reach(context, tmp_path):
    import ray

    settings = _settings(tmp_path, n_trials=1)
    with pytest.raises(NasAscError, match="cannot connect to the Ray cluster at '127.0.0.1:1'"):
        run_ray_search(context, settings, "tiny", address="127.0.0.1:1")
    assert not ray.is_initialized()
