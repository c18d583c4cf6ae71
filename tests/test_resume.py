"""Continuing and sharing studies: per-trial sampler seeds, refusing incompatible continuations,
checkpoints of earlier versions, and one worker's fatal error stopping the others."""

from __future__ import annotations

import shutil

import optuna
import pytest
import torch

from nas_asc.budget import DEFAULT_BUDGET, parse_budget
from nas_asc.errors import NasAscError
from nas_asc.search.artifacts import Checkpoint
from nas_asc.search.backends import run_trials
from nas_asc.search.objective import DIRECTIONS, SearchContext
from nas_asc.search.samplers import TrialSeededSampler
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import check_existing_study, open_study, retry_history, trial_counts

SPACE = {
    "name": "resume",
    "model": "tfsepnet",
    "fixed": {"frontend": {"n_mels": 32}, "train": {"batch_size": 32, "epochs": 1}},
    "dimensions": {
        "model.width": {"type": "int", "low": 8, "high": 64, "step": 4},
        "train.kd_lambda": {"type": "float", "low": 0.0, "high": 0.5},
    },
}


def _sample(study: optuna.Study, trial: optuna.Trial) -> dict:
    return SearchSpace.from_dict(SPACE).sample(trial)["model"] | {"n": trial.number}


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_workers_that_start_together_sample_from_different_seeds(kind):
    """Two workers ask before either has sampled (as processes starting at the same moment):
    each trial is seeded by its own number, so they do not draw the same candidate."""
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.sampler = TrialSeededSampler(kind, study_seed=0)
    first, second = study.ask(), study.ask()
    a, b = _sample(study, first), _sample(study, second)
    assert a["width"] != b["width"] or a["n"] != b["n"]
    assert first.params != second.params
    # and the same trial number under the same study seed samples the same candidate
    again = optuna.create_study(directions=list(DIRECTIONS))
    again.sampler = TrialSeededSampler(kind, study_seed=0)
    assert _sample(again, again.ask()) == a


def _recorded_study(tmp_path, **attrs) -> str:
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    study = open_study("r", storage, create=True)
    record = {
        "budget": DEFAULT_BUDGET.to_dict(),
        "seed": 0,
        "data_info": {"fingerprint": "abc"},
        "data": "synthetic",
        "space": "resume",
        **attrs,
    }
    for key, value in record.items():
        study.set_user_attr(key, value)
    return storage


def test_continuing_a_study_as_it_was_started_is_allowed(tmp_path):
    storage = _recorded_study(tmp_path, artifact_dir=str(tmp_path / "a"))
    recorded = check_existing_study(storage, "r", "resume", DEFAULT_BUDGET, 0, "abc")
    assert recorded == str(tmp_path / "a")
    # a study that does not exist yet is a new one; nothing is created to find that out
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert check_existing_study(missing, "r", "resume", DEFAULT_BUDGET, 0, "abc") is None
    assert not (tmp_path / "none.db").exists()
    assert check_existing_study(storage, "other", "resume", DEFAULT_BUDGET, 0, "abc") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(space_name="cnn"), "was started with space 'resume'"),
        (dict(budget=parse_budget("bytes=64k")), "--budget"),
        (dict(seed=1), "was started with --seed 0"),
        (dict(fingerprint="xyz"), r"was run on another dataset \(synthetic\)"),
        (dict(artifact_dir="elsewhere"), "keeps its checkpoints in"),
    ],
)
def test_continuing_a_study_differently_is_refused(tmp_path, change, message):
    storage = _recorded_study(tmp_path, artifact_dir=str(tmp_path / "a"))
    kwargs = dict(space_name="resume", budget=DEFAULT_BUDGET, seed=0, fingerprint="abc")
    kwargs.update(change)
    with pytest.raises(NasAscError, match=message):
        check_existing_study(storage, "r", **kwargs)


def test_continuing_a_study_of_an_earlier_family_revision_is_refused(tmp_path):
    from nas_asc.models import get_model_revision

    kwargs = dict(space_name="resume", budget=DEFAULT_BUDGET, seed=0, fingerprint="abc")
    # recorded before TF-SepNet became the authors' network: no model_revision (revision 1)
    storage = _recorded_study(tmp_path, space_definition={"model": "tfsepnet"})
    with pytest.raises(NasAscError, match=r"trained tfsepnet revision 1; the tfsepnet family"):
        check_existing_study(storage, "r", **kwargs)
    now = get_model_revision("tfsepnet")
    (tmp_path / "b").mkdir()
    current = _recorded_study(
        tmp_path / "b", space_definition={"model": "tfsepnet"}, model_revision=now
    )
    assert check_existing_study(current, "r", **kwargs) is None


@pytest.mark.parametrize(
    ("family", "old", "new"),
    [
        ("bcresnet", True, "resnorm"),
        ("bcresnet", False, "none"),
        ("bcres2net", True, "resnorm"),
    ],
)
def test_checkpoints_of_earlier_versions_map_resnorm_to_norm(family, old, new):
    from nas_asc.models import get_model_revision

    revision = get_model_revision(family)
    ckpt = Checkpoint(
        family, {"width": 8, "resnorm": old}, {}, {}, {}, 0, {}, {}, model_revision=revision
    )
    assert ckpt.model_config == {"width": 8, "norm": new}
    assert ckpt.build_architecture().__class__.__name__.lower().startswith("bc")


def test_a_fatal_error_in_one_worker_stops_the_search_in_one_line(tiny_root, tmp_path, monkeypatch):
    """Two worker processes on PostgreSQL; the dataset loses its audio after it was loaded, so
    computing features fails in the workers (a data error: it stops the search, not a trial)."""
    import os

    url = os.environ.get("NAS_ASC_TEST_POSTGRES")
    if not url:
        if os.environ.get("NAS_ASC_REQUIRE_POSTGRES"):
            pytest.fail("NAS_ASC_REQUIRE_POSTGRES is set but NAS_ASC_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL server (set NAS_ASC_TEST_POSTGRES; .ci/postgres.sh starts one)")
    from nas_asc.data.protocol import ValidationSpec, make_protocol
    from nas_asc.data.tau22 import load_tau22

    monkeypatch.setenv("NAS_ASC_CACHE", str(tmp_path / "cache"))  # no cached features to use
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    dataset = make_protocol(load_tau22(data), ValidationSpec()).search_view()
    for wav in (data / "audio").glob("*.wav"):
        wav.write_bytes(b"")
    feasible = {**SPACE, "dimensions": {"model.width": {"type": "int", "low": 8, "high": 16}}}
    context = SearchContext(
        SearchSpace.from_dict(feasible),
        DEFAULT_BUDGET,
        dataset,
        torch.randn(dataset.n_meta_rows, 10),
        progress=False,
    )
    study_name = f"fatal-{os.getpid()}-{tmp_path.name}"
    settings = SearchSettings(study_name, url, n_trials=6, workers=2, pruner="none")
    with pytest.raises(NasAscError) as info:
        run_trials(context, settings, data_label="tiny")
    message = str(info.value)
    assert message.startswith("worker ") and "DatasetError" in message, message
    assert "\n" not in message and "re-run the same command" in message
    study = optuna.load_study(study_name=study_name, storage=url)
    # each worker stopped at the one trial it started, which was re-queued (a data error is
    # not the candidate's fault), then both stopped: nothing counts as done. A worker that starts
    # late can take the copy the other one queued and stop at it too: one copy then carries both
    # stopped trials in its retry history. Either way no stopped trial is lost.
    stopped = {t.number for t in study.trials if t.state == optuna.trial.TrialState.FAIL}
    queued = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert 1 <= len(stopped) <= 2 and 1 <= len(queued) <= len(stopped)
    assert {n for t in queued for n in retry_history(t)} == stopped
    assert len(study.trials) == len(stopped) + len(queued)
    assert all("DatasetError" in t.user_attrs["requeued_after"] for t in queued)
    assert trial_counts(study).done == 0


def test_a_requeued_copy_runs_within_the_bounds_of_the_continued_search(tmp_path):
    """A copy queued under ``--epochs 6`` and run by a search continued under ``--epochs 4``:
    its epochs are clipped to 4, and Optuna finds the distribution it is asked for (no warning
    of inconsistent parameter values, no old bound kept)."""
    import warnings

    from optuna.distributions import IntDistribution

    from nas_asc.search.study import fit_to_space

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'fit.db'}")
    width = IntDistribution(8, 16, step=4)
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params={"train.epochs": 6, "model.width": 12},
            distributions={"train.epochs": IntDistribution(1, 6), "model.width": width},
        )
    )
    trial = study.ask()  # the queued copy, now running
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_to_space(trial, {"train.epochs": IntDistribution(1, 4), "model.width": width})
        assert trial.suggest_int("train.epochs", 1, 4) == 4
        assert trial.suggest_int("model.width", 8, 16, step=4) == 12
    assert study.trials[0].params == {"train.epochs": 4, "model.width": 12}
    assert study.trials[0].distributions["train.epochs"] == IntDistribution(1, 4)


EPOCHS_YAML = """
name: epochs
model: tfsepnet
fixed:
  frontend: {n_mels: 32}
  train: {batch_size: 8, lr: 0.02}
dimensions:
  model.width: {type: int, low: 8, high: 16, step: 4}
  train.epochs: {type: int, low: 4, high: 20}
  train.kd_lambda: {type: float, low: 0.0, high: 0.5, step: 0.05}
"""


@pytest.mark.slow  # a search interrupted, then continued: two processes
def test_continuing_an_interrupted_search_under_other_epochs_is_quiet(tiny_root, tmp_path):
    """Ctrl-C re-queues the running trial; the same search continued with a lower ``--epochs``
    runs the copy within the new bound and prints no warning (Optuna's "Inconsistent parameter
    values" and "constraint value is ignored" before)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    space = tmp_path / "epochs.yaml"
    space.write_text(EPOCHS_YAML)
    storage = f"sqlite:///{tmp_path / 'e.db'}"
    argv = [sys.executable, "-m", "nas_asc", "search", "--space", str(space), "--data"]
    argv += [str(tiny_root), "--storage", storage, "--study", "e", "--trials", "2"]
    argv += ["--pruner", "none", "--threads", "1", "--heartbeat", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        [*argv, "--epochs", "8"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in first.stdout:  # interrupted in its first trial's training
        if "epoch 2/" in line:
            first.send_signal(signal.SIGINT)
            break
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    time.sleep(0.1)
    second = subprocess.run(
        [*argv, "-q", "--epochs", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr == "", second.stderr[-3000:]
    study = optuna.load_study(study_name="e", storage=storage)
    copy = next(t for t in study.trials if "requeued_after" in t.user_attrs)
    assert copy.state == optuna.trial.TrialState.COMPLETE
    assert copy.params["train.epochs"] <= 4
    assert trial_counts(study).done == 2
