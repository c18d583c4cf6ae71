"""One trial end to end on tiny data: budget gate, training, int8, study attributes."""

from __future__ import annotations

import optuna
import pytest
import torch

from nas_asc.budget import DEFAULT_BUDGET, parse_budget
from nas_asc.search.backends import run_trials
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective, SearchContext
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace

TINY_SPACE = {
    "name": "tiny",
    "model": "tfsepnet",
    "fixed": {"frontend": {"n_mels": 32}, "train": {"batch_size": 32, "lr": 0.02}},
    "dimensions": {
        "model.width": {"type": "int", "low": 8, "high": 12, "step": 4},
        "train.epochs": {"type": "int", "low": 1, "high": 2},
        "train.kd_lambda": {"type": "float", "low": 0.0, "high": 0.5},
    },
}


@pytest.fixture()
def context(tiny_search):
    space = SearchSpace.from_dict(TINY_SPACE)
    teacher = torch.randn(tiny_search.n_meta_rows, 10)  # any logits indexed by meta.csv row
    return SearchContext(space, DEFAULT_BUDGET, tiny_search, teacher, seed=0, progress=False)


def _study():
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVE_NAMES))
    return study


def test_a_trained_trial_records_int8_accuracy_and_complexity(context):
    study = _study()
    study.optimize(Objective(context), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE
    a = t.user_attrs
    assert a["status"] == "trained" and a["feasible"] is True
    assert t.values[0] == a["int8_accuracy"]
    assert 0.0 <= a["int8_accuracy"] <= 1.0 and 0.0 <= a["fp32_accuracy"] <= 1.0
    assert t.values[1] == a["macs"] and t.values[2] == a["param_bytes"]
    assert set(a["accuracy_by_device"]) == {"a", "b", "c", "s1", "s2", "s3"}  # validation
    assert a["unseen_accuracy"] is None and a["train_seconds"] > 0  # no unseen in validation
    assert a["config"]["model"]["width"] in (8, 12)
    assert all(v <= 0 for v in t.constraints.values())
    # where it trained and with which libraries
    assert a["runtime"]["device"] == "cpu" == a["train_accel"]["device"]
    assert a["runtime"]["torch"] == torch.__version__ and a["train_accel"]["amp"] == "off"


def test_the_workers_runtime_reaches_the_training_explicitly(context, monkeypatch):
    """Threads, device and compile travel in the runtime the worker hands its objective, not
    through module state: the trial's training gets exactly that runtime, and the trial
    records its device."""
    import nas_asc.search.objective as objective
    from nas_asc.train.accel import AccelOptions

    given = AccelOptions(threads=1, device="cpu", compile="auto")
    seen = []

    def spy(*args, runtime=None, **kwargs):
        seen.append(runtime)
        raise RuntimeError("stopped after the hand-over")

    monkeypatch.setattr(objective, "train_candidate", spy)
    study = _study()
    study.optimize(Objective(context, runtime=given), n_trials=1, catch=(objective.TrialError,))
    assert seen == [given]
    assert study.trials[0].user_attrs["runtime"]["device"] == "cpu"


def test_over_budget_candidates_are_never_trained(context, monkeypatch):
    import nas_asc.search.objective as objective

    def boom(*args, **kwargs):
        raise AssertionError("an over-budget candidate must not be trained")

    monkeypatch.setattr(objective, "train", boom)
    context.budget = parse_budget("bytes=1000")
    study = _study()
    study.optimize(Objective(context), n_trials=2)
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.user_attrs["status"] == "infeasible"
        assert "parameter bytes > 1,000" in t.user_attrs["infeasible_reason"]
        assert t.user_attrs["param_bytes"] > 1000
        assert t.constraints["param_bytes"] > 0
    assert study.best_trials == []  # infeasible trials are never on the front


def test_same_seed_and_config_give_the_same_metrics(context):
    results = []
    for _ in range(2):
        study = _study()
        study.enqueue_trial({"model.width": 8, "train.epochs": 1, "train.kd_lambda": 0.3})
        study.optimize(Objective(context), n_trials=1)
        results.append((study.trials[0].values, study.trials[0].user_attrs["accuracy_by_device"]))
    assert results[0] == results[1]


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(context, tmp_path, monkeypatch):
    import nas_asc.search.objective as objective

    calls = {"n": 0}
    real_train = objective.train

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise FloatingPointError("loss became nan at epoch 0, step 0")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective, "train", flaky)
    settings = SearchSettings("s", f"sqlite:///{tmp_path / 's.db'}", n_trials=2)
    study = run_trials(context, settings, data_label="tiny")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "loss became nan" in study.trials[0].user_attrs["fail_reason"]
    assert study.metric_names == list(OBJECTIVE_NAMES)
    assert study.user_attrs["budget"]["max_macs"] == 30_000_000
    # re-running continues to the trial count instead of starting over
    again = run_trials(context, SearchSettings("s", settings.storage, n_trials=3), "tiny")
    assert len(again.trials) == 3


PRUNE_SPACE = {
    "name": "tiny-prune",
    "model": "cnn",
    "fixed": {
        "model": {"variant": "sm1", "dropout": 0.0},
        "frontend": {"sample_rate": 8000, "hop_length": 1024, "n_mels": 32},
        "train": {"batch_size": 32, "lr": 0.01, "epochs": 1, "prune": True},
    },
    "dimensions": {"model.width": {"type": "categorical", "choices": [1.0]}},
}


def test_an_over_budget_prunable_candidate_is_trained_pruned_and_recorded_pruned(tiny_search):
    # SM1 on 1x32x8 has 51,802 parameter bytes; 12,010 with every layer at 4 filters
    space = SearchSpace.from_dict(PRUNE_SPACE)
    teacher = torch.randn(tiny_search.n_meta_rows, 10)
    budget = parse_budget("bytes=30k")
    ctx = SearchContext(space, budget, tiny_search, teacher, seed=0, progress=False)
    study = _study()
    study.optimize(Objective(ctx), n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("fail_reason")
    a = t.user_attrs
    assert a["status"] == "trained" and a["feasible"] is True
    assert a["pruning"]["before"]["param_bytes"] == 51_802
    assert a["param_bytes"] == a["pruning"]["after"]["param_bytes"] <= 30_000
    assert t.values[2] == a["param_bytes"] and t.values[1] == a["macs"]
    assert all(v <= 0 for v in t.constraints.values())
    assert any(h.get("phase") == "finetune" for h in a["history"])
    # the activation memory recorded is the pruned network's
    from nas_asc.memory import peak_activation_bytes
    from nas_asc.models import create_model

    pruned = create_model("cnn", **a["config"]["model"])
    for layer, kept in a["pruning"]["filters_after"].items():
        pruned.prune_filters(layer, torch.arange(kept))
    assert a["peak_activation_bytes"] == peak_activation_bytes(pruned, (1, 1, 32, 8)) > 0


def test_a_candidate_that_cannot_be_pruned_into_budget_is_never_trained(tiny_search, monkeypatch):
    import nas_asc.search.objective as objective

    monkeypatch.setattr(objective, "train", lambda *a, **k: pytest.fail("must not train"))
    space = SearchSpace.from_dict(PRUNE_SPACE)
    ctx = SearchContext(space, parse_budget("bytes=5k"), tiny_search, None, seed=0, progress=False)
    study = _study()
    study.optimize(Objective(ctx), n_trials=1)
    a = study.trials[0].user_attrs
    assert a["status"] == "infeasible"
    assert "even pruned to 4 filters per layer" in a["infeasible_reason"]
    assert a["prune_floor"]["param_bytes"] == 12_010


WIDE = 96  # TF-SepNet at width 96 is over the 128,000-byte budget


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_over_budget_proposals_take_no_slot_of_trials(context, tmp_path):
    """``--trials 2`` means two trained candidates: the proposals over budget before them are
    recorded (complexity, constraints) but not counted."""
    from nas_asc.search.study import prepare_study, trial_counts

    wide = {**TINY_SPACE["dimensions"], "model.width": {"type": "int", "low": 8, "high": WIDE}}
    context.space = SearchSpace.from_dict({**TINY_SPACE, "dimensions": wide})
    settings = SearchSettings("slots", f"sqlite:///{tmp_path / 's.db'}", n_trials=2, pruner="none")
    study = prepare_study(context, settings, data_label="tiny")
    for width in (WIDE, WIDE, 8, WIDE, 8):
        study.enqueue_trial({"model.width": width, "train.epochs": 1, "train.kd_lambda": 0.1})
    study = run_trials(context, settings, data_label="tiny")
    statuses = [t.user_attrs["status"] for t in study.trials]
    assert statuses == ["infeasible", "infeasible", "trained", "infeasible", "trained"]
    counts = trial_counts(study)
    assert (counts.done, counts.trained, counts.infeasible) == (2, 2, 3)
    assert all(study.trials[i].constraints["param_bytes"] > 0 for i in (0, 1, 3))


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_a_space_that_never_fits_stops_after_max_rejections_naming_the_smallest(
    context, tmp_path, monkeypatch
):
    import nas_asc.search.objective as objective
    from nas_asc.errors import NasAscError

    def boom(*args, **kwargs):
        raise AssertionError("an over-budget candidate must not be trained")

    monkeypatch.setattr(objective, "train", boom)
    context.budget = parse_budget("bytes=1000")
    settings = SearchSettings(
        "never", f"sqlite:///{tmp_path / 'n.db'}", n_trials=3, pruner="none", max_rejections=4
    )
    with pytest.raises(NasAscError) as raised:
        run_trials(context, settings, data_label="tiny")
    study = optuna.load_study(study_name="never", storage=settings.storage)
    assert len(study.trials) == 4  # the streak, then nothing more
    smallest = min(
        study.trials,
        key=lambda t: max(t.user_attrs["param_bytes"] / 1000, t.user_attrs["macs"] / 30e6),
    )
    assert str(raised.value) == (
        "4 proposals in a row were over budget (1,000 parameter bytes, 30,000,000 MACs); the "
        f"smallest had {smallest.user_attrs['param_bytes']:,} parameter bytes and "
        f"{smallest.user_attrs['macs']:,} MACs: narrow the space to smaller models or raise "
        "--budget; the study keeps every finished trial"
    )


def test_the_rejection_streak_restarts_at_a_trained_trial():
    from nas_asc.search.backends.base import RejectionStreak

    def trial(status, n_bytes=0, macs=0):
        attrs = {"status": status, "param_bytes": n_bytes, "macs": macs}
        return optuna.trial.create_trial(values=[0.0, 1.0, 1.0], user_attrs=attrs)

    streak = RejectionStreak(2, parse_budget("bytes=1000,macs=1M"))
    streak.record(trial("infeasible", 1500, 10))
    streak.check()
    streak.record(trial("trained", 500, 10))
    streak.record(trial("infeasible", 3000, 10))  # share 3.0
    streak.record(trial("infeasible", 900, 2_000_000))  # share 2.0: the smallest
    with pytest.raises(Exception, match="the smallest had 900 parameter bytes and 2,000,000 MACs"):
        streak.check()
