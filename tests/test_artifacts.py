"""Per-trial checkpoints and confusion images in the Optuna artifact store."""

from __future__ import annotations

import optuna
import pytest
import torch
from toydata import artifact_context

from nas_asc.data.features import FrontEnd, load_features
from nas_asc.errors import NasAscError
from nas_asc.search.artifacts import (
    calibration_indices,
    default_artifact_dir,
    load_checkpoint,
)
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective
from nas_asc.train.loop import evaluate
from nas_asc.train.quantize import quantize_ptq

SPACE = {
    "name": "tiny",
    "model": "tfsepnet",
    "fixed": {
        "model": {"width": 8},
        "frontend": {"n_mels": 32},
        "train": {"batch_size": 32, "lr": 0.02, "epochs": 1},
    },
    "dimensions": {"model.dropout": {"type": "float", "low": 0.0, "high": 0.1}},
}


@pytest.fixture(scope="module")
def trained_study(tiny_dataset, tmp_path_factory):
    artifact_dir = tmp_path_factory.mktemp("artifacts")
    context = artifact_context(tiny_dataset, SPACE, artifact_dir, seed=3)
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr("artifact_dir", str(artifact_dir))
    study.optimize(Objective(context), n_trials=1)
    return study


def test_trained_trial_keeps_a_checkpoint_and_a_confusion_image(trained_study):
    trial = trained_study.trials[0]
    metas = {
        m.artifact_id: m
        for m in optuna.artifacts.get_all_artifact_meta(trial, storage=trained_study._storage)
    }
    assert trial.user_attrs["checkpoint_artifact"] in metas
    image = metas[trial.user_attrs["confusion_artifact"]]
    assert image.mimetype == "image/png"


def test_checkpoint_rebuilds_the_exact_int8_model(trained_study, tiny_dataset):
    trial = trained_study.trials[0]
    ckpt = load_checkpoint(trained_study, trial)
    assert ckpt.family == "tfsepnet" and ckpt.model_config["width"] == 8
    assert ckpt.complexity["macs"] == trial.user_attrs["macs"]
    model = ckpt.build_model()
    train_set, eval_set = load_features(tiny_dataset, FrontEnd(**ckpt.frontend), progress=False)
    fp32 = evaluate(model, eval_set)
    assert fp32.accuracy == pytest.approx(trial.user_attrs["fp32_accuracy"])
    idx = calibration_indices(len(train_set), ckpt.calibration["seed"], ckpt.calibration["n"])
    int8 = evaluate(quantize_ptq(model, train_set.x[idx]), eval_set)
    assert int8.accuracy == pytest.approx(trial.user_attrs["int8_accuracy"])


def test_missing_checkpoint_is_one_clear_error(trained_study):
    trial = trained_study.trials[0]
    fake = optuna.trial.create_trial(values=[0.0, 1.0, 1.0], user_attrs={"status": "infeasible"})
    with pytest.raises(NasAscError, match="has no checkpoint .*infeasible"):
        load_checkpoint(trained_study, fake)
    assert trial.user_attrs["status"] == "trained"


def test_default_artifact_dir_sits_beside_the_sqlite_file():
    assert str(default_artifact_dir("sqlite:///studies/x.db", "x")) == "studies/x/artifacts"
    assert str(default_artifact_dir("postgresql://h/db", "x")) == "studies/x/artifacts"


def test_checkpoint_of_a_pruned_model_rebuilds_its_structure():
    from nas_asc.budget import parse_budget
    from nas_asc.complexity import count
    from nas_asc.models import create_model
    from nas_asc.search.artifacts import Checkpoint
    from nas_asc.train.prune import prune_to_fit

    shape = (1, 1, 32, 8)
    model = create_model("cnn", variant="sm1")
    result = prune_to_fit(model, parse_budget("bytes=30k").fits, shape)
    ckpt = Checkpoint(
        family="cnn",
        model_config={"variant": "sm1"},
        frontend={},
        train={},
        state_dict=model.state_dict(),
        seed=0,
        calibration={"seed": 0, "n": 1},
        complexity=result.after.to_dict(),
        pruned=result.filters_after,
    )
    rebuilt = ckpt.build_model()
    assert count(rebuilt, shape).param_bytes == result.after.param_bytes
    x = torch.randn(2, *shape[1:])
    torch.testing.assert_close(rebuilt(x), model.eval()(x))
