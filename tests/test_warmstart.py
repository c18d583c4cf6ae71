"""Warm start from a space's reference configurations, the RAM budget limit and the RAM objective,
through real searches on tiny data."""

from __future__ import annotations

import optuna
import pytest
import torch

from nas_asc.budget import DEFAULT_BUDGET, parse_budget
from nas_asc.errors import NasAscError
from nas_asc.search.backends import run_trials
from nas_asc.search.objective import SearchContext
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import RAM_OBJECTIVE, objective_names, trial_counts

SPACE = {
    "name": "tiny-refs",
    "model": "tfsepnet",
    "fixed": {"frontend": {"n_mels": 32}, "train": {"batch_size": 32, "lr": 0.02}},
    "dimensions": {
        "model.width": {"type": "int", "low": 8, "high": 12, "step": 4},
        "train.epochs": {"type": "int", "low": 1, "high": 1},
        "train.kd_lambda": {"type": "float", "low": 0.0, "high": 0.5},
    },
    # width 12: 7,810 parameter bytes; width 8: 4,310 (the 6k budget below keeps only c8)
    "references": {
        "c12": {"model.width": 12, "train.kd_lambda": 0.25},
        "c8": {"model.width": 8},
    },
}


@pytest.fixture()
def context(tiny_search):
    space = SearchSpace.from_dict(SPACE)
    teacher = torch.randn(tiny_search.n_meta_rows, 10)
    return SearchContext(space, DEFAULT_BUDGET, tiny_search, teacher, seed=0, progress=False)


def _settings(tmp_path, n_trials, **kwargs) -> SearchSettings:
    return SearchSettings(
        "warm", f"sqlite:///{tmp_path / 'w.db'}", n_trials=n_trials, pruner="none", **kwargs
    )


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_a_new_study_trains_the_references_that_fit_first(context, tmp_path):
    context.budget = parse_budget("bytes=6000")
    study = run_trials(context, _settings(tmp_path, 2), data_label="tiny")
    assert study.user_attrs["warm_start"] == {
        "enabled": True,
        "queued": ["c8"],
        "skipped": {"c12": "over budget: 7,810 parameter bytes > 6,000"},
    }
    first = study.trials[0]
    assert first.user_attrs["reference"] == "c8" and first.params["model.width"] == 8
    assert first.user_attrs["status"] == "trained"
    assert "train.kd_lambda" in first.params  # what the reference leaves out is sampled
    assert all("reference" not in t.user_attrs for t in study.trials[1:])
    # continuing the study queues nothing again
    study = run_trials(context, _settings(tmp_path, 3), data_label="tiny")
    assert sum("reference" in t.user_attrs for t in study.trials) == 1
    assert trial_counts(study).done == 3


@pytest.mark.slow  # trains three references (16 s)
def test_references_keep_their_values_and_run_in_the_space_order(context, tmp_path):
    study = run_trials(context, _settings(tmp_path, 2), data_label="tiny")
    assert [t.user_attrs.get("reference") for t in study.trials] == ["c12", "c8"]
    assert study.trials[0].params["model.width"] == 12
    assert study.trials[0].params["train.kd_lambda"] == 0.25
    assert study.user_attrs["warm_start"]["queued"] == ["c12", "c8"]


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_no_warm_start_queues_nothing(context, tmp_path):
    study = run_trials(context, _settings(tmp_path, 1, warm_start=False), data_label="tiny")
    assert study.user_attrs["warm_start"] == {"enabled": False, "queued": [], "skipped": {}}
    assert "reference" not in study.trials[0].user_attrs


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_a_ram_limit_rejects_untrained_and_tells_the_sampler(context, tmp_path, monkeypatch):
    import nas_asc.search.objective as objective

    def boom(*args, **kwargs):
        raise AssertionError("a candidate over the RAM limit must not be trained")

    monkeypatch.setattr(objective, "train", boom)
    # width 8 on 1x32x44 peaks at 11,264 activation bytes, width 12 at 16,896
    context.budget = parse_budget("ram=10k")
    settings = _settings(tmp_path, 1, max_rejections=3, warm_start=False)
    with pytest.raises(NasAscError, match="3 proposals in a row were over budget"):
        run_trials(context, settings, data_label="tiny")
    study = optuna.load_study(study_name="warm", storage=settings.storage)
    for t in study.trials:
        peak = t.user_attrs["peak_activation_bytes"]
        assert t.user_attrs["status"] == "infeasible"
        assert t.user_attrs["infeasible_reason"] == f"{peak:,} activation bytes at peak > 10,000"
        assert t.constraints["peak_activation_bytes"] == pytest.approx(peak / 10_000 - 1)


def test_the_ram_objective_is_a_fourth_value_and_fixed_for_the_study(context, tmp_path):
    study = run_trials(
        context, _settings(tmp_path, 1, ram_objective=True, warm_start=False), data_label="tiny"
    )
    assert study.metric_names == list(objective_names(True))
    assert study.metric_names[-1] == RAM_OBJECTIVE
    t = study.trials[0]
    assert len(t.values) == 4 and t.values[3] == t.user_attrs["peak_activation_bytes"]
    with pytest.raises(NasAscError) as raised:
        run_trials(context, _settings(tmp_path, 2, warm_start=False), data_label="tiny")
    assert str(raised.value) == (
        "study 'warm' was created with the RAM objective (int8_accuracy, macs, param_bytes, "
        "peak_activation_bytes); continue it with --ram-objective, or choose a new --study name"
    )


def test_the_pruner_compares_ram_too_in_a_study_with_the_ram_objective():
    from nas_asc.search.pruning import EPOCH_ACCURACY, DominancePruner

    def study(ram: bool):
        s = optuna.create_study(directions=["maximize"] + ["minimize"] * (3 if ram else 2))
        for _ in range(3):  # cheaper and better, but needing more activation RAM
            attrs = {
                EPOCH_ACCURACY: [0.9, 0.9],
                "macs": 10,
                "param_bytes": 10,
                "peak_activation_bytes": 5_000,
            }
            values = [0.9, 10, 10] + ([5_000] if ram else [])
            s.add_trial(optuna.trial.create_trial(values=values, user_attrs=attrs))
        return s

    pruner = DominancePruner(min_epochs=1)
    assert pruner.should_prune(study(False), 99, 100, 100, [0.5], 1_000)
    assert not pruner.should_prune(study(True), 99, 100, 100, [0.5], 1_000)
    assert pruner.should_prune(study(True), 99, 100, 100, [0.5], 5_000)


def test_a_search_queues_no_more_references_than_its_trials():
    from nas_asc.search.warmstart import queue_references

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    space = SearchSpace.from_dict(SPACE)
    outcome = queue_references(study, space, DEFAULT_BUDGET, limit=1)
    assert outcome == {
        "queued": ["c12"],
        "skipped": {"c8": "no room: the search trains 1 trial(s) in all (--trials)"},
    }
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING]


REFS_YAML = """
name: refs
model: tfsepnet
fixed:
  frontend: {n_mels: 32}
  train: {batch_size: 32, lr: 0.02, epochs: 1}
dimensions:
  model.width: {type: int, low: 8, high: 16, step: 4}
  train.kd_lambda: {type: float, low: 0.0, high: 0.5}
references:
  c8: {model.width: 8}
  c12: {model.width: 12}
  c16: {model.width: 16}
"""


@pytest.mark.slow  # a real search through the CLI (data, teacher, one trial)
def test_trials_1_trains_one_trial_also_with_three_references(tiny_root, tmp_path, capsys):
    """--trials N is N trained trials in all, the queued references included, and the counter
    says so (three were trained, each printed as [1/1])."""
    import re

    from nas_asc.cli import main

    space = tmp_path / "refs.yaml"
    space.write_text(REFS_YAML)
    db = tmp_path / "refs.db"
    argv = ["search", "--space", str(space), "--data", str(tiny_root), "--trials", "1"]
    argv += ["--storage", f"sqlite:///{db}", "--reports", str(tmp_path / "r"), "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^trial \d+ \[(\d+/\d+)\]", out, flags=re.M) == ["1/1"], out
    assert "warm start: queued the reference configurations c8; skipped c12 (no room" in out
    study = optuna.load_study(study_name="refs", storage=f"sqlite:///{db}")
    assert len(study.trials) == 1 and study.trials[0].user_attrs["reference"] == "c8"
    assert trial_counts(study).done == 1
