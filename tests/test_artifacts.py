"""Per-trial checkpoints and confusion images in the Optuna artifact store."""

from __future__ import annotations

import optuna
import pytest
import torch
from toydata import artifact_context, record_data

from nas_asc.data.features import FrontEnd, load_features
from nas_asc.errors import NasAscError
from nas_asc.models import get_model_revision
from nas_asc.search.artifacts import (
    calibration_indices,
    default_artifact_dir,
    load_checkpoint,
    open_artifact_store,
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
def trained_study(tiny_search, tmp_path_factory):
    artifact_dir = tmp_path_factory.mktemp("artifacts")
    context = artifact_context(tiny_search, SPACE, artifact_dir, seed=3)
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


def test_checkpoint_rebuilds_the_exact_int8_model(trained_study, tiny_search):
    trial = trained_study.trials[0]
    ckpt = load_checkpoint(trained_study, trial)
    assert ckpt.family == "tfsepnet" and ckpt.model_config["width"] == 8
    assert ckpt.complexity["macs"] == trial.user_attrs["macs"]
    model = ckpt.build_model()
    train_set, eval_set = load_features(tiny_search, FrontEnd(**ckpt.frontend), progress=False)
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
        model_revision=get_model_revision("cnn"),
    )
    rebuilt = ckpt.build_model()
    assert count(rebuilt, shape).param_bytes == result.after.param_bytes
    x = torch.randn(2, *shape[1:])
    torch.testing.assert_close(rebuilt(x), model.eval()(x))


# ------------------------------------------------------------------ quantization-aware training

QAT_MODEL = {"width": 8, "depths": [1, 1, 1, 1]}


def _qat_trial_study(tiny_search, tiny_protocol, tiny_root, artifact_dir):
    """A study with one QAT-trained trial recorded as the search records it (checkpoint included),
    and the trained fake-quantized model."""
    from nas_asc.budget import DEFAULT_BUDGET
    from nas_asc.complexity import count
    from nas_asc.models import create_model
    from nas_asc.search.artifacts import Checkpoint, open_artifact_store, save_checkpoint
    from nas_asc.train.quantize import convert_qat, prepare_qat

    frontend = FrontEnd(n_mels=32)
    train_set, eval_set = load_features(tiny_search, frontend, progress=False)
    torch.manual_seed(0)
    model = create_model("tfsepnet", **QAT_MODEL)
    prepared = prepare_qat(model, train_set.x[:1])
    opt = torch.optim.Adam(prepared.parameters(), lr=0.02)
    for start in range(0, len(train_set), 32):
        loss = torch.nn.functional.cross_entropy(
            prepared(train_set.x[start : start + 32]), train_set.y[start : start + 32]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    int8 = evaluate(convert_qat(prepared), eval_set)
    c = count(model, frontend.input_shape())
    study = optuna.create_study(study_name="qat", directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr("artifact_dir", str(artifact_dir))
    study.set_user_attr("budget", DEFAULT_BUDGET.to_dict())
    record_data(study, tiny_protocol, tiny_root)
    trial = study.ask()
    for key, value in {
        "status": "trained",
        "int8_accuracy": int8.accuracy,
        "accuracy_by_device": int8.accuracy_by_device,
        "seen_accuracy": int8.seen_accuracy,
        "unseen_accuracy": int8.unseen_accuracy,
        "macs": c.macs,
        "param_bytes": c.param_bytes,
        "params": c.params,
    }.items():
        trial.set_user_attr(key, value)
    checkpoint = Checkpoint(
        family="tfsepnet",
        model_config=dict(QAT_MODEL),
        frontend=frontend.to_dict(),
        train={"epochs": 1, "batch_size": 32},
        state_dict=prepared.state_dict(),
        seed=0,
        calibration={"seed": 0, "n": 0},
        complexity=c.to_dict(),
        quantization="qat",
        model_revision=get_model_revision("tfsepnet"),
    )
    save_checkpoint(trial, open_artifact_store(artifact_dir), checkpoint)
    study.tell(trial, [int8.accuracy, float(c.macs), float(c.param_bytes)])
    return study, prepared, int8, train_set, eval_set


@pytest.fixture(scope="module")
def qat_study(tiny_search, tiny_protocol, tiny_root, tmp_path_factory):
    artifact_dir = tmp_path_factory.mktemp("qat-artifacts")
    return _qat_trial_study(tiny_search, tiny_protocol, tiny_root, artifact_dir)


def test_qat_checkpoint_round_trip_reproduces_the_int8_model_exactly(qat_study):
    from nas_asc.train.quantize import fake_quant_disabled

    study, prepared, int8, train_set, eval_set = qat_study
    ckpt = load_checkpoint(study, study.trials[0])
    assert ckpt.quantization == "qat"
    rebuilt = evaluate(ckpt.build_int8(train_set.x), eval_set)
    assert torch.equal(rebuilt.logits, int8.logits)
    assert rebuilt.accuracy == study.trials[0].user_attrs["int8_accuracy"]
    # the float view is the QAT network with fake quantization off
    with fake_quant_disabled(prepared):
        fp32 = evaluate(prepared, eval_set)
    torch.testing.assert_close(evaluate(ckpt.build_fp32(train_set.x), eval_set).logits, fp32.logits)
    with pytest.raises(NasAscError, match="pass model inputs"):
        ckpt.build_model()


def test_checkpoint_without_a_quantization_field_loads_as_ptq(trained_study, tmp_path):
    from optuna.artifacts import upload_artifact

    trial = trained_study.trials[0]
    ckpt = load_checkpoint(trained_study, trial)
    assert ckpt.quantization == "ptq"
    old = torch.load(
        trained_study.user_attrs["artifact_dir"] + "/" + trial.user_attrs["checkpoint_artifact"],
        weights_only=True,
    )
    old.pop("quantization", None)  # written before the field existed
    path = tmp_path / "old.pt"
    torch.save(old, path)
    fresh = optuna.create_study(directions=list(DIRECTIONS))
    fresh.set_user_attr("artifact_dir", trained_study.user_attrs["artifact_dir"])
    t = fresh.ask()
    store = open_artifact_store(trained_study.user_attrs["artifact_dir"])
    artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=t)
    t.set_user_attr("checkpoint_artifact", artifact_id)
    fresh.tell(t, [0.0, 1.0, 1.0])
    assert load_checkpoint(fresh, fresh.trials[0]).quantization == "ptq"


def test_checkpoint_refuses_an_unknown_quantization():
    from nas_asc.search.artifacts import Checkpoint

    with pytest.raises(NasAscError, match=r"quantization must be one of \['ptq', 'qat'\]"):
        Checkpoint("tfsepnet", {}, {}, {}, {}, 0, {}, {}, quantization="int4")


@pytest.mark.slow
def test_a_qat_trial_exports_and_re_verifies(qat_study, tiny_protocol, tmp_path):
    pytest.importorskip("onnxruntime")
    from nas_asc.export import export_study
    from nas_asc.train.quantize import convert_qat

    study, prepared, _, _, _ = qat_study
    (result,) = export_study(study, tmp_path, trials=[0], progress=False, tolerance_pp=5.0)
    # export measures on the test fold, with the training part the trial was trained on
    _, test_set = load_features(tiny_protocol.test_view(), FrontEnd(n_mels=32), progress=False)
    assert result.int8_accuracy == evaluate(convert_qat(prepared), test_set).accuracy
    assert result.card["verification"]["passed"]
    assert "quantization-aware training" in result.card["training"]["quantization"]
    saved = torch.load(result.files["model.pt"], weights_only=True)
    assert saved["quantization"] == "qat"
    assert result.param_bytes == study.trials[0].user_attrs["param_bytes"]


def test_checkpoint_records_the_family_revision(trained_study):
    ckpt = load_checkpoint(trained_study, trained_study.trials[0])
    assert ckpt.model_revision == get_model_revision("tfsepnet") == 2


def test_checkpoint_of_an_earlier_family_revision_is_refused():
    from nas_asc.search.artifacts import Checkpoint

    # written before TF-SepNet became the authors' network (no model_revision: revision 1)
    old = Checkpoint("tfsepnet", {"width": 8}, {}, {}, {}, 0, {}, {})
    with pytest.raises(NasAscError, match=r"tfsepnet network of revision 1, but the tfsepnet "):
        old.build_model()


def _artifact_study(tmp_path):
    """A study with an artifact folder and one running trial that uploads a file."""
    from nas_asc.search.artifacts import open_artifact_store

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'a.db'}", study_name="a")
    study.set_user_attr("artifact_dir", str(tmp_path / "artifacts"))
    store = open_artifact_store(tmp_path / "artifacts")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"weights")
    return study, store, payload


def test_an_upload_whose_record_fails_takes_its_file_back(tmp_path, monkeypatch):
    """The file is written, then the database refuses the trial's record of it (a full disk):
    the upload raises and the artifact folder is as it was, with no file nothing points to."""
    from nas_asc.search import artifacts

    study, store, payload = _artifact_study(tmp_path)
    trial = study.ask()

    def refused(*args, **kwargs):
        raise optuna.exceptions.StorageInternalError("database or disk is full")

    monkeypatch.setattr(study._storage, "set_trial_system_attr", refused)
    with pytest.raises(optuna.exceptions.StorageInternalError):
        artifacts.upload_file(trial, store, str(payload), "application/octet-stream")
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_an_upload_that_fills_the_disk_names_the_folder_and_leaves_no_part(tmp_path):
    """The store's write fails halfway (ENOSPC, raised by the file copy without a file name):
    the error names the artifact folder and the partial file is removed."""
    import errno

    from nas_asc.search import artifacts

    study, store, payload = _artifact_study(tmp_path)
    trial = study.ask()

    class FillsUp:
        def read(self, n=-1):
            raise OSError(errno.ENOSPC, "No space left on device")

    write = store.write
    store.write = lambda artifact_id, body: write(artifact_id, FillsUp())
    with pytest.raises(OSError) as raised:
        artifacts.upload_file(trial, store, str(payload), "application/octet-stream")
    assert (raised.value.errno, raised.value.filename) == (
        errno.ENOSPC,
        str(tmp_path / "artifacts"),
    )
    assert list((tmp_path / "artifacts").iterdir()) == []
    assert not any(k.startswith("artifacts:") for k in study.trials[0].system_attrs)


def test_failed_trials_lose_their_artifact_files_and_completed_ones_keep_theirs(tmp_path):
    from nas_asc.search import artifacts
    from nas_asc.search.artifacts import remove_artifacts_of_failed_trials

    study, store, payload = _artifact_study(tmp_path)
    kept, stopped, gone = study.ask(), study.ask(), study.ask()
    ids = {
        t.number: artifacts.upload_file(t, store, str(payload), "x/y")
        for t in (kept, stopped, gone)
    }
    (tmp_path / "artifacts" / ids[gone.number]).unlink()  # already removed: fine
    study.tell(kept, 1.0)
    study.tell(stopped, state=optuna.trial.TrialState.FAIL)
    study.tell(gone, state=optuna.trial.TrialState.FAIL)
    assert remove_artifacts_of_failed_trials(study, study.get_trials()) == 1
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == [ids[kept.number]]
    assert remove_artifacts_of_failed_trials(study, study.get_trials()) == 0  # idempotent
