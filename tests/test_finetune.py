"""DCASE 2025 device-specific fine-tuning: records, selection, rebuilds, test fold, resume."""

from __future__ import annotations

import math
import re
import shutil

import optuna
import pytest
import torch
from toydata import artifact_context, record_data, toy_set

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.data.features import FrontEnd, load_features
from nas_asc.errors import NasAscError
from nas_asc.finetune import (
    FINETUNE_VERSION,
    _load_device_checkpoint,
    device_subset,
    finetune_seed,
    finetune_study,
    format_finetune,
    load_device_int8,
)
from nas_asc.search.artifacts import load_checkpoint
from nas_asc.search.holdout import measure_front, reload, set_finished_trial_attrs
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective
from nas_asc.train.loop import evaluate, predict

SEED = 5
FIXED = {
    "model": {"width": 8, "depths": [1, 1, 1, 1]},
    "frontend": {"n_mels": 32},
    "train": {"batch_size": 32, "lr": 0.02, "epochs": 1},
}
SPACE = {
    "name": "tiny",
    "model": "tfsepnet",
    "fixed": FIXED,
    "dimensions": {"model.dropout": {"type": "float", "low": 0.0, "high": 0.1}},
}
QAT_SPACE = {**SPACE, "fixed": {**FIXED, "train": {**FIXED["train"], "quantization": "qat"}}}
RECORD_KEYS = {
    "checkpoint_artifact",
    "seed",
    "train_clips",
    "validation_clips",
    "validation_general",
    "validation_device",
    "selected",
    "reason",
    "test_general",
    "test_device",
}
FIGURE_KEYS = {"accuracy", "accuracy_by_device", "seen_accuracy", "unseen_accuracy"}


def _search(name, space, tiny_search, tiny_protocol, tiny_root, folder):
    """A one-trial study of the tiny dataset, as ``nas-asc search`` leaves it, with its teacher's
    logits in a file the study records (so fine-tuning distils from the search's teacher)."""
    torch.manual_seed(SEED)  # the context's random teacher logits: the same every run
    context = artifact_context(tiny_search, space, folder / "artifacts", seed=SEED)
    torch.save(context.teacher_logits, folder / "teacher.pt")
    db = folder / "study.db"
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{db}",
        directions=list(DIRECTIONS),
        sampler=optuna.samplers.RandomSampler(seed=SEED),
    )
    study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr("artifact_dir", str(folder / "artifacts"))
    study.set_user_attr("budget", DEFAULT_BUDGET.to_dict())
    study.set_user_attr("seed", SEED)
    record_data(study, tiny_protocol, tiny_root)
    info = {**study.user_attrs["data_info"], "teacher_logits": str(folder / "teacher.pt")}
    study.set_user_attr("data_info", info)
    study.optimize(Objective(context), n_trials=1)
    return measure_front(study, tiny_protocol, progress=False), db


def _copy(db, tmp_path, name: str) -> optuna.Study:
    """The study in ``db``, copied to a database of its own (artifacts stay shared)."""
    path = tmp_path / "copy.db"
    shutil.copy(db, path)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path}")


@pytest.fixture(scope="module")
def searched(tiny_search, tiny_protocol, tiny_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune-ptq")
    return _search("tiny", SPACE, tiny_search, tiny_protocol, tiny_root, folder)


@pytest.fixture(scope="module")
def tuned_db(searched, tmp_path_factory):
    """The searched study, copied, with its Pareto trial fine-tuned per device; its database."""
    folder = tmp_path_factory.mktemp("tuned")
    finetune_study(_copy(searched[1], folder, "tiny"), epochs=2, lr_scale=0.5, progress=False)
    return folder / "copy.db"


@pytest.fixture
def tuned(tuned_db):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tuned_db}")


@pytest.fixture(scope="module")
def features(tiny_protocol):
    """(training part, validation split), (training part, test fold) for the space's front end."""
    frontend = FrontEnd(n_mels=32)
    return (
        load_features(tiny_protocol.search_view(), frontend, progress=False),
        load_features(tiny_protocol.test_view(), frontend, progress=False),
    )


def _training_devices(protocol) -> list[str]:
    order = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
    present = set(protocol.fit["device"])
    return [d for d in order if d in present]


def test_device_subset_keeps_one_device_and_the_normalization():
    full = toy_set(n=30)
    full.mean, full.std = 1.5, 2.5
    b = device_subset(full, "b")
    idx = [i for i, d in enumerate(full.devices) if d == "b"]
    assert len(b) == len(idx) == 9 and b.devices == ["b"] * 9
    assert torch.equal(b.x, full.x[idx]) and torch.equal(b.y, full.y[idx])
    assert torch.equal(b.rows, full.rows[idx])
    assert b.filenames == [full.filenames[i] for i in idx]
    assert (b.mean, b.std) == (1.5, 2.5)
    none = device_subset(full, "s6")
    assert len(none) == 0 and none.x.shape == (0, *full.x.shape[1:])


def test_records_are_written_for_every_training_device(tuned, tiny_protocol):
    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    record = trial.user_attrs["device_models"]
    devices = _training_devices(tiny_protocol)
    assert set(record) == {"version", "epochs", "lr_scale", "devices", "test"}
    assert (record["version"], record["epochs"], record["lr_scale"]) == (FINETUNE_VERSION, 2, 0.5)
    assert list(record["devices"]) == devices  # natural order
    fit, val = tiny_protocol.fit, tiny_protocol.validation
    for device, entry in record["devices"].items():
        assert set(entry) == RECORD_KEYS
        assert entry["seed"] == finetune_seed(SEED, trial.number, device)
        assert entry["train_clips"] == int((fit["device"] == device).sum())
        assert entry["validation_clips"] == int((val["device"] == device).sum())
    ids = [e["checkpoint_artifact"] for e in record["devices"].values()]
    assert len(set(ids)) == len(ids) and trial.user_attrs["checkpoint_artifact"] not in ids
    test = record["test"]
    assert test["clips"] == len(tiny_protocol.test)
    assert set(test["general"]) == set(test["combined"]) == FIGURE_KEYS


def test_selection_is_on_validation_and_device_beats_general(tuned, features):
    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    (train_set, val_set), _ = features
    general = load_checkpoint(tuned, trial).build_int8(train_set.x)
    for device, entry in trial.user_attrs["device_models"]["devices"].items():
        if entry["validation_clips"] == 0:
            assert not entry["selected"] and entry["validation_device"] is None
            assert "no validation clips" in entry["reason"]
            continue
        # the general figure is the search's own int8 validation accuracy on that device
        assert entry["validation_general"] == trial.user_attrs["accuracy_by_device"][device]
        assert (
            entry["validation_general"]
            == evaluate(general, device_subset(val_set, device)).accuracy
        )
        assert entry["selected"] == (entry["validation_device"] > entry["validation_general"])
        assert ("does not beat" in entry["reason"]) != entry["selected"]


def test_device_models_rebuild_exactly_and_were_fine_tuned(tuned, features):
    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    (train_set, val_set), (test_train, _) = features
    general = load_checkpoint(tuned, trial)
    for device, entry in trial.user_attrs["device_models"]["devices"].items():
        ckpt = _load_device_checkpoint(tuned, trial.number, device, entry["checkpoint_artifact"])
        assert (ckpt.family, ckpt.model_config, ckpt.quantization) == (
            general.family,
            general.model_config,
            "ptq",
        )
        assert ckpt.train["epochs"] == 2 and ckpt.train["warmup_epochs"] == 0
        assert ckpt.train["lr"] == general.train["lr"] * 0.5
        assert ckpt.train["kd_strategy"] == "hinton" and ckpt.train["devicesim_p"] == 0.0
        assert ckpt.calibration == {"seed": entry["seed"], "n": entry["train_clips"]}
        changed = [
            k
            for k, v in ckpt.state_dict.items()
            if v.is_floating_point() and not torch.equal(v, general.state_dict[k])
        ]
        assert changed, f"device {device}: fine-tuning changed no weight"
        model = load_device_int8(tuned, trial, device, train_set)
        subset = device_subset(val_set, device)
        if len(subset):
            assert evaluate(model, subset).accuracy == entry["validation_device"]
    # the test view's training part is the same clips and normalization: the same model
    again = load_device_int8(tuned, trial, device, test_train)
    assert torch.equal(predict(model, val_set.x), predict(again, val_set.x))


def test_combined_system_differs_from_general_only_on_selected_devices(tuned, tiny_protocol):
    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    record = trial.user_attrs["device_models"]
    general, combined = record["test"]["general"], record["test"]["combined"]
    # the general figures are those the end of the search measured on the test fold
    assert general["accuracy"] == trial.user_attrs["test_int8_accuracy"]
    assert general["accuracy_by_device"] == trial.user_attrs["test_accuracy_by_device"]
    counts = tiny_protocol.test["device"].value_counts().to_dict()
    assert set(combined["accuracy_by_device"]) == set(counts)
    hits = 0.0
    for device, n in counts.items():
        entry = record["devices"].get(device)
        acc = combined["accuracy_by_device"][device]
        if entry is None or not entry["selected"]:
            assert acc == general["accuracy_by_device"][device]
        else:
            assert acc == entry["test_device"]
        if entry is not None:
            assert entry["test_general"] == general["accuracy_by_device"][device]
        hits += acc * n
    assert combined["accuracy"] == pytest.approx(hits / len(tiny_protocol.test), abs=1e-12)
    if not any(e["selected"] for e in record["devices"].values()):
        assert combined == general
    seen = set(record["devices"])
    for figures in (general, combined):
        by = figures["accuracy_by_device"]
        assert figures["seen_accuracy"] == pytest.approx(
            sum(by[d] for d in seen) / len(seen), abs=1e-12
        )
        unseen = [by[d] for d in by if d not in seen]
        assert figures["unseen_accuracy"] == pytest.approx(sum(unseen) / len(unseen), abs=1e-12)
    assert combined["unseen_accuracy"] == general["unseen_accuracy"]


def test_format_shows_every_test_device_and_the_summaries(tuned, searched):
    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    record = trial.user_attrs["device_models"]
    text = format_finetune(tuned)
    lines = text.splitlines()
    assert lines[0].startswith(f"trial {trial.number}: device models fine-tuned 2 epoch(s)")
    assert lines[1].split()[:3] == ["device", "general", "test"]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    general, combined = record["test"]["general"], record["test"]["combined"]
    assert list(rows) == ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6", *_SUMMARY]

    def cell(value) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    for device, cells in rows.items():
        if device in _SUMMARY:
            key = "accuracy" if device == "overall" else f"{device}_accuracy"
            assert cells[1:] == [cell(general[key]), cell(combined[key])]
            continue
        by = (general["accuracy_by_device"][device], combined["accuracy_by_device"][device])
        entry = record["devices"].get(device)
        if entry is None:
            assert cells[1:] == [*map(cell, by), "-", "-", "-"]
        else:
            selected = "yes" if entry["selected"] else "no"
            validation = (entry["validation_general"], entry["validation_device"])
            assert cells[1:] == [*map(cell, by), selected, *map(cell, validation)]
    assert format_finetune(searched[0]) == "no fine-tuned trials"
    assert format_finetune(tuned, trials=[99]) == "no fine-tuned trials"


_SUMMARY = ("overall", "seen", "unseen")


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_a_rerun_resumes_and_other_settings_start_over(
    tuned, tuned_db, monkeypatch, tmp_path, capsys
):
    import nas_asc.train.loop as loop

    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    study = _copy(tuned_db, tmp_path, "tiny")
    before = trial.user_attrs["device_models"]
    dropped = list(before["devices"])[1]
    cut = {**before, "devices": {d: e for d, e in before["devices"].items() if d != dropped}}
    set_finished_trial_attrs(study, trial._trial_id, {"device_models": cut})
    calls = []
    original = loop.train

    received = []

    def counting(model, train_set, config, teacher_logits, seed, runtime=None):
        calls.append(sorted(set(train_set.devices)))
        received.append((config, teacher_logits, seed))
        return original(model, train_set, config, teacher_logits, seed, runtime=runtime)

    monkeypatch.setattr(loop, "train", counting)
    study = finetune_study(reload(study), trials=[trial.number], epochs=2, lr_scale=0.5)
    assert calls == [[dropped]]  # exactly the missing device
    ((config, teacher_logits, seed),) = received
    recipe = load_checkpoint(study, trial).train
    assert (config.epochs, config.warmup_epochs, config.lr) == (2, 0, recipe["lr"] * 0.5)
    assert (config.kd_strategy, config.devicesim_p, config.prune) == ("hinton", 0.0, False)
    assert seed == finetune_seed(SEED, trial.number, dropped)
    # distilled from the study's teacher: the logits file the study records
    teacher_file = study.user_attrs["data_info"]["teacher_logits"]
    assert torch.equal(teacher_logits, torch.load(teacher_file, weights_only=True))
    out = capsys.readouterr().out
    assert "fine-tune: 1 trial(s) x " in out and "1 device model(s) to train" in out
    assert f"[1/1] trial {trial.number}, device {dropped}: " in out
    assert f"trial {trial.number} on the test fold (180 clips)" in out
    after = study.trials[trial.number].user_attrs["device_models"]
    assert list(after["devices"]) == list(before["devices"])
    # same seed, same data: the retrained device model and every figure come out the same
    redone = {k: v for k, v in after["devices"][dropped].items() if k != "checkpoint_artifact"}
    assert redone == {
        k: v for k, v in before["devices"][dropped].items() if k != "checkpoint_artifact"
    }
    assert after["test"] == before["test"]

    calls.clear()
    study = finetune_study(study, trials=[trial.number], epochs=2, lr_scale=0.5, progress=False)
    assert calls == []  # all done: nothing trained

    # other settings start the trial over; a run killed in its second device keeps the first
    def killed(model, train_set, config, teacher_logits, seed, runtime=None):
        calls.append(sorted(set(train_set.devices)))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(model, train_set, config, teacher_logits, seed, runtime=runtime)

    monkeypatch.setattr(loop, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune_study(study, trials=[trial.number], epochs=1, lr_scale=0.5)
    assert "starting it over with version 1, epochs=1, lr_scale=0.5" in capsys.readouterr().out
    first = list(before["devices"])[0]
    assert calls == [[first], [list(before["devices"])[1]]]
    record = reload(study).trials[trial.number].user_attrs["device_models"]
    assert (record["epochs"], list(record["devices"])) == (1, [first])
    assert "test" not in record


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, r"fine-tuning epochs must be a positive integer, got 0"),
        ({"epochs": True}, r"fine-tuning epochs must be a positive integer, got True"),
        ({"lr_scale": -1}, r"lr_scale must be a finite number > 0 .*, got -1"),
        ({"lr_scale": math.nan}, r"lr_scale must be a finite number > 0 .*, got nan"),
        ({"trials": [99]}, r"has no trial 99 \(trials: 0-1\)"),
        ({"trials": [1]}, r"trial 1 of study 'tiny' has no checkpoint \(status: failed\)"),
        ({"protocol": None}, r"searched before nas-asc had a validation split"),
    ],
)
def test_bad_input_is_one_line_and_stores_nothing(searched, tmp_path, kwargs, message):
    study = _copy(searched[1], tmp_path, "tiny")
    failed = optuna.trial.TrialState.FAIL
    study.add_trial(optuna.trial.create_trial(state=failed, user_attrs={"status": "failed"}))
    if "protocol" in kwargs:
        study.set_user_attr("protocol", kwargs.pop("protocol"))
    artifacts = sorted(p.name for p in _artifact_dir(study).iterdir())
    with pytest.raises(NasAscError, match=message) as info:
        finetune_study(reload(study), progress=False, **kwargs)
    assert "\n" not in str(info.value)
    study = reload(study)
    assert all("device_models" not in t.user_attrs for t in study.trials)
    assert sorted(p.name for p in _artifact_dir(study).iterdir()) == artifacts
    recorded = study._storage.get_study_system_attrs(study._study_id)
    assert not any(k.startswith("artifacts:") for k in recorded)


def _artifact_dir(study):
    from pathlib import Path

    return Path(study.user_attrs["artifact_dir"])


def test_load_device_int8_refuses_what_it_cannot_rebuild(tuned, features):
    (trial,) = [t for t in tuned.trials if "device_models" in t.user_attrs]
    (train_set, _), _ = features
    with pytest.raises(NasAscError, match=r"has no model for device 's6' \(device models: a,"):
        load_device_int8(tuned, trial, "s6", train_set)
    device = next(iter(trial.user_attrs["device_models"]["devices"]))
    half = device_subset(train_set, device)
    with pytest.raises(NasAscError, match="but its model was fine-tuned on"):
        load_device_int8(tuned, trial, device, device_subset(half, "none"))


@pytest.fixture(scope="module")
def qat_tuned(tiny_search, tiny_protocol, tiny_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune-qat")
    study, _ = _search("qat", QAT_SPACE, tiny_search, tiny_protocol, tiny_root, folder)
    return finetune_study(study, epochs=2, lr_scale=0.5, progress=False)


@pytest.mark.slow  # a QAT search and fine-tuning (23 s)
def test_a_qat_trial_fine_tunes_its_fake_quantized_network(qat_tuned, features):
    (trial,) = [t for t in qat_tuned.trials if "device_models" in t.user_attrs]
    (train_set, val_set), _ = features
    general = load_checkpoint(qat_tuned, trial)
    assert general.quantization == "qat"
    general_int8 = general.build_int8(train_set.x)
    record = trial.user_attrs["device_models"]
    assert list(record["devices"]) and set(record["test"]) == {"clips", "general", "combined"}
    assert record["test"]["general"]["accuracy"] == trial.user_attrs["test_int8_accuracy"]
    ranges = [k for k in general.state_dict if re.search(r"activation_post_process_\d+\.scale$", k)]
    assert ranges
    for device, entry in record["devices"].items():
        artifact = entry["checkpoint_artifact"]
        ckpt = _load_device_checkpoint(qat_tuned, trial.number, device, artifact)
        assert ckpt.quantization == "qat" and ckpt.train["quantization"] == "qat"
        assert set(ckpt.state_dict) == set(general.state_dict)
        # observers ran while fine-tuning (activation ranges moved), then were frozen
        moved = [k for k in ranges if not torch.equal(ckpt.state_dict[k], general.state_dict[k])]
        assert moved, f"device {device}: no activation range moved"
        flags = {k: int(v) for k, v in ckpt.state_dict.items() if k.endswith("_enabled")}
        assert flags and all(
            v == (0 if k.endswith("observer_enabled") else 1) for k, v in flags.items()
        )
        subset = device_subset(val_set, device)
        model = load_device_int8(qat_tuned, trial, device, train_set)
        if len(subset):
            assert evaluate(model, subset).accuracy == entry["validation_device"]
            assert entry["validation_general"] == evaluate(general_int8, subset).accuracy
            assert entry["selected"] == (entry["validation_device"] > entry["validation_general"])
