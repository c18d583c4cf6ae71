"""The training-recipe space (``search_spaces/tfsepnet_recipe.yaml``) through the real search.

Issue 4's elements are each a dimension of that YAML file: PTQ or QAT int8, the KD strategy
(Hinton, RRS, DML) and its weighting, Freq-MixStyle, SpecAugment, mixup and impulse-response
device simulation. Three enqueued trials on the tiny dataset switch every one of them on at
least once, run through :func:`~nas_asc.search.backends.optuna.run_trials` with checkpoints, and
must each record the measured int8 accuracy as the study's accuracy objective. The QAT trial's
checkpoint must rebuild exactly the int8 model the trial measured.
"""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from toydata import artifact_context

from nas_asc.data.features import FrontEnd, load_features
from nas_asc.search.artifacts import load_checkpoint
from nas_asc.search.backends import run_trials
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import load_space
from nas_asc.train.loop import evaluate

# every recipe element on at least once; the space's own fixed values do the rest
TRIALS = [
    {
        "train.quantization": "qat",
        "train.kd_strategy": "hinton",
        "train.kd_weighting": "additive",
        "train.kd_temperature": 3.0,
        "train.kd_lambda": 0.8,
        "train.mixstyle_alpha": 0.3,
        "train.mixstyle_p": 0.5,
        "train.specaugment_p": 0.5,
        "train.mixup_p": 0.0,
        "train.devicesim_p": 0.5,
        "train.epochs": 2,
    },
    {
        "train.quantization": "ptq",
        "train.kd_strategy": "rrs",
        "train.kd_weighting": "convex",
        "train.kd_temperature": 2.0,
        "train.kd_lambda": 0.5,
        "train.mixstyle_alpha": 0.3,
        "train.mixstyle_p": 0.0,
        "train.specaugment_p": 0.0,
        "train.mixup_p": 0.5,
        "train.devicesim_p": 0.0,
        "train.epochs": 2,
    },
    {
        "train.quantization": "ptq",
        "train.kd_strategy": "dml",
        "train.kd_weighting": "convex",
        "train.kd_temperature": 3.0,
        "train.kd_lambda": 0.3,
        "train.mixstyle_alpha": 0.3,
        "train.mixstyle_p": 0.0,
        "train.specaugment_p": 0.0,
        "train.mixup_p": 0.0,
        "train.devicesim_p": 0.0,
        "train.epochs": 2,
    },
]


@pytest.fixture(scope="module")
def recipe_study(tiny_search, tmp_path_factory):
    space = load_space("tfsepnet_recipe")
    assert {d.name for d in space.dimensions} == set(TRIALS[0])  # the test covers every dimension
    tmp = tmp_path_factory.mktemp("recipes")
    context = artifact_context(tiny_search, space.to_dict(), tmp / "artifacts")
    context = dataclasses.replace(context, space=space)
    settings = SearchSettings(
        "recipes",
        f"sqlite:///{tmp / 'recipes.db'}",
        n_trials=len(TRIALS),
        artifact_dir=str(tmp / "artifacts"),
        pruner="none",
    )
    study = optuna.create_study(
        study_name="recipes",
        storage=settings.storage,
        directions=["maximize", "minimize", "minimize"],
    )
    for params in TRIALS:
        study.enqueue_trial(params)
    return run_trials(context, settings, data_label="tiny"), space


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_every_recipe_element_trains_and_records_its_int8_accuracy(recipe_study):
    study, _ = recipe_study
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * len(TRIALS)
    for t, params in zip(trials, TRIALS, strict=True):
        assert t.params == params, t.number
        attrs = t.user_attrs
        assert attrs["status"] == "trained", attrs.get("fail_reason")
        # the accuracy objective is the int8 model's, and the drop from float is recorded
        assert t.values[0] == attrs["int8_accuracy"]
        assert attrs["int8_drop"] == pytest.approx(attrs["fp32_accuracy"] - attrs["int8_accuracy"])
        assert attrs["quantization"] == params["train.quantization"]
        assert attrs["config"]["train"]["kd_strategy"] == params["train.kd_strategy"]
        stages = [h["stage"] for h in attrs["history"]]
        assert len(stages) == params["train.epochs"]
        assert {"hinton": ["response"] * 2, "rrs": ["relational", "response"]}.get(
            params["train.kd_strategy"], ["mutual", "response"]
        ) == stages
    qat = trials[0].user_attrs
    assert [h["qat"] for h in qat["history"]] == [False, True]  # the space's qat_epochs: 1


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_the_qat_trial_checkpoint_rebuilds_the_measured_int8_model(recipe_study, tiny_search):
    study, space = recipe_study
    trial = study.get_trials(deepcopy=False)[0]
    ckpt = load_checkpoint(study, trial)
    assert ckpt.quantization == "qat"
    train_set, eval_set = load_features(tiny_search, FrontEnd(**ckpt.frontend), progress=False)
    rebuilt = evaluate(ckpt.build_int8(train_set.x), eval_set)
    assert rebuilt.accuracy == trial.user_attrs["int8_accuracy"]
    assert rebuilt.accuracy_by_device == trial.user_attrs["accuracy_by_device"]
