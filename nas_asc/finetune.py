"""DCASE 2025 Task 1 device-specific fine-tuning: one model per known device, the general one for
the rest.

DCASE 2025 Task 1 ("Low-complexity acoustic scene classification with device information") gives
the recording device's ID at inference and allows one model per device known from training;
clips of devices unknown at training time (s4-s6 in TAU22) go to the general model. ``nas-asc
finetune`` builds such a system for the chosen trials of a study (the Pareto set by default):

* for each device of the training part (``a, b, c, s1, ...``), a copy of the trial's trained
  general model is fine-tuned on that device's clips of the training part only, with the
  trial's own recipe for ``epochs`` epochs at ``lr_scale`` times its learning rate, no warm-up,
  response (Hinton) distillation from the study's teacher (the last stage of ``rrs`` and
  ``dml`` recipes too), no device simulation, no pruning. A PTQ trial fine-tunes its
  float network and is calibrated on the device's training clips; a QAT trial fine-tunes its
  fake-quantized network (observers and fake quantization on: quantization-aware fine-tuning)
  and is converted with the ranges it ends with;
* each device model is kept as a checkpoint, an artifact of the study, and rebuilt bit for bit
  by :func:`load_device_int8`;
* a device model serves its device only if its int8 accuracy on that device's clips of the
  **validation split** beats the general int8 model's there (ties, and a device without
  validation clips, keep the general model);
* when every device of a trial is done, the general model and the combined system (each clip to
  its device's model if that one was selected, else to the general model) are measured once on
  the **test fold**.

The trial's user attribute ``device_models`` holds it all, written after every device so that a
killed run resumes where it stopped::

    {"version": 1, "epochs": 3, "lr_scale": 0.1,
     "devices": {"b": {"checkpoint_artifact": "...", "seed": 123, "train_clips": 4,
                       "validation_clips": 3, "validation_general": 0.33,
                       "validation_device": 0.67, "selected": true, "reason": "...",
                       "test_general": 0.35, "test_device": 0.4}, ...},
     "test": {"clips": 180,
              "general": {"accuracy", "accuracy_by_device", "seen_accuracy", "unseen_accuracy"},
              "combined": {...the same keys...}}}

``test_general``/``test_device`` (each model on the device's test clips) and ``test`` appear once
every device is done; "seen" devices are those of the training part. A run with the same
``epochs`` and ``lr_scale`` skips what is stored, except a device whose checkpoint file is
missing (deleted because it was corrupt), which it fine-tunes anew; other settings start the
trial over. Device checkpoints that the stored record no longer refers to are deleted from the
artifact folder once it is stored.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import numbers
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial

from nas_asc.data.features import FeatureSet
from nas_asc.errors import NasAscError
from nas_asc.progress import reporter_for
from nas_asc.study.record import StudyRecord

__all__ = [
    "FINETUNE_VERSION",
    "device_subset",
    "finetune_seed",
    "finetune_study",
    "format_finetune",
    "load_device_int8",
]

FINETUNE_VERSION = 1  # records of another version (procedure) are started over, not mixed
_ATTR = "device_models"


def finetune_seed(study_seed: int, trial_number: int, device: str) -> int:
    """Seed of a trial's device model (stable, distinct from the trial's and evaluate's)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}:finetune:{device}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def device_subset(features: FeatureSet, device: str) -> FeatureSet:
    """The clips of ``device`` in ``features``, in their order (none: an empty set).

    ``x``, ``y``, ``devices``, ``filenames`` and ``rows`` are subset; the normalization
    (``mean``, ``std``) is the whole set's, which the device's model keeps.
    """
    keep = [i for i, d in enumerate(features.devices) if d == device]
    return features.subset(torch.tensor(keep, dtype=torch.long))


def _device_key(device: str) -> tuple[str, int, str]:
    """Natural order: ``a, b, c, s1, s2, ..., s10``."""
    match = re.fullmatch(r"([^\d]*)(\d*)(.*)", device)
    prefix, number, rest = match.groups()
    return prefix, int(number) if number else -1, rest


def _device_order(devices: Iterable[str]) -> list[str]:
    return sorted(set(devices), key=_device_key)


def _check_settings(epochs, lr_scale) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise NasAscError(
            f"fine-tuning epochs must be a positive integer, got {epochs!r}; e.g. epochs=3"
        )
    ok = isinstance(lr_scale, numbers.Real) and not isinstance(lr_scale, bool)
    if not ok or not math.isfinite(float(lr_scale)) or float(lr_scale) <= 0:
        raise NasAscError(
            f"fine-tuning lr_scale must be a finite number > 0 (it multiplies the recipe's "
            f"learning rate), got {lr_scale!r}; e.g. lr_scale=0.1"
        )


def _finetune_recipe(recipe, epochs: int, lr_scale: float):
    """The trial's recipe as a fine-tuning: short, no warm-up, response KD, nothing structural."""
    return dataclasses.replace(
        recipe,
        epochs=epochs,
        warmup_epochs=0,
        lr=recipe.lr * lr_scale,
        kd_strategy="hinton",
        devicesim_p=0.0,
        prune=False,
        qat_epochs=None,
    )


def _start_record(trial: FrozenTrial, epochs: int, lr_scale: float, progress: bool) -> dict:
    """The trial's stored record if it was made with these settings, else a fresh one."""
    say = reporter_for(progress).message
    fresh = {"version": FINETUNE_VERSION, "epochs": epochs, "lr_scale": lr_scale, "devices": {}}
    old = trial.user_attrs.get(_ATTR)
    if not isinstance(old, dict):
        return fresh
    settings = (old.get("version"), old.get("epochs"), old.get("lr_scale"))
    if settings == (FINETUNE_VERSION, epochs, lr_scale) and isinstance(old.get("devices"), dict):
        return {**fresh, **{k: v for k, v in old.items() if k in ("devices", "test")}}
    say(
        f"note: trial {trial.number}'s device models were fine-tuned with version "
        f"{settings[0]}, epochs={settings[1]}, lr_scale={settings[2]}; starting it over "
        f"with version {FINETUNE_VERSION}, epochs={epochs}, lr_scale={lr_scale}"
    )
    return fresh


class _Features:
    """Training-part features with the validation split or the test fold, per front end."""

    def __init__(self, protocol, progress: bool) -> None:
        self.views = {"search": protocol.search_view(), "test": protocol.test_view()}
        self.progress = progress
        self._cache: dict[tuple, tuple[FeatureSet, FeatureSet]] = {}

    def get(self, which: str, frontend) -> tuple[FeatureSet, FeatureSet]:
        from nas_asc.data.features import load_features

        key = (which, frontend)
        if key not in self._cache:
            if len(self._cache) >= 2:  # bound memory, as a search does
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = load_features(self.views[which], frontend, self.progress)
        return self._cache[key]


def finetune_study(
    study: optuna.Study,
    trials: Sequence[int] | None = None,
    epochs: int = 3,
    lr_scale: float = 0.1,
    data_root=None,
    progress: bool = True,
    runtime=None,
) -> optuna.Study:
    """Fine-tune one model per training device for the chosen trials, select each on the
    validation split, measure the general and the combined system once on the test fold.

    Args:
        study: a study run by ``nas-asc search`` with checkpoints and a validation protocol.
        trials: trial numbers; None takes the Pareto set.
        epochs: fine-tuning epochs per device.
        lr_scale: the fine-tuning learning rate as a multiple of the trial's recipe's.
        data_root: the dataset root, if not the one the study recorded.
        progress: a header, one line per device and a test-fold line per trial.
        runtime: device, threads and compile of the fine-tuning
            (:class:`~nas_asc.train.accel.AccelOptions`); None: its defaults (the CPU).

    Returns:
        The study, loaded again with the trials' ``device_models`` attribute.

    Raises:
        NasAscError: bad ``epochs`` or ``lr_scale``, an unknown trial or one without a
            checkpoint, a study without a validation protocol or outside a database, a
            database that refuses writes; raised before anything is trained or stored.

    Example:
        >>> study = finetune_study(study, trials=[5], epochs=3, lr_scale=0.1)  # doctest: +SKIP
        >>> print(format_finetune(study, [5]))  # doctest: +SKIP
    """
    from nas_asc.data.features import FrontEnd
    from nas_asc.evaluate import StudyTeacher, uses_teacher
    from nas_asc.search.artifacts import load_checkpoint, select_trials, study_artifact_store
    from nas_asc.search.holdout import (
        check_recordable,
        load_study_data,
        rdb_storage,
        record_trial_attrs,
        record_unrecorded,
        reload,
    )
    from nas_asc.train.loop import TrainConfig

    say = reporter_for(progress).message
    _check_settings(epochs, lr_scale)
    epochs, lr_scale = int(epochs), float(lr_scale)
    select_trials(study, trials, "fine-tune")  # a bad trial number fails before any work
    rdb_storage(study)  # records go into the study's database: refuse any other storage now
    store = study_artifact_store(study)  # a missing artifact folder fails before any work
    study = record_unrecorded(study, "fine-tune", progress)  # records a refused write kept
    chosen = select_trials(study, trials, "fine-tune")
    study_seed = StudyRecord.of(study).seed or 0
    _, data_info, protocol = load_study_data(study, data_root, progress)
    if protocol is None:
        raise NasAscError(
            f"study {study.study_name!r} was searched before nas-asc had a validation split (its "
            "figures read the test fold); search again with this version to fine-tune"
        )
    devices = _device_order(protocol.fit["device"])
    teacher = StudyTeacher(protocol.search_view(), data_info, progress)
    features = _Features(protocol, progress)
    plans = []
    for trial in chosen:
        record = _start_record(trial, epochs, lr_scale, progress)
        earlier = _checkpoint_ids(trial.user_attrs.get(_ATTR))  # deleted once superseded
        _forget_lost(study, trial, record, progress)
        missing = [d for d in devices if d not in record["devices"]]
        plans.append((trial, record, missing, earlier))
    total = sum(len(missing) for _, _, missing, _ in plans)
    if any(missing or "test" not in record for _, record, missing, _ in plans):
        check_recordable(study, "fine-tune")  # every device model is recorded: none trained yet
    say(
        f"fine-tune: {len(chosen)} trial(s) x {len(devices)} training device(s) "
        f"({', '.join(devices)}), {total} device model(s) to train for {epochs} epoch(s) at "
        f"{lr_scale:g} x the recipe's learning rate on the training part ({len(protocol.fit):,}"
        f" clips), selected on the validation split ({len(protocol.validation):,} clips), "
        f"measured once on the test fold ({len(protocol.test):,} clips)"
    )
    step = 0
    for trial, record, missing, earlier in plans:
        if not missing and "test" in record:
            say(
                f"  trial {trial.number}: done with these settings already (device models "
                "and test-fold figures stored)"
            )
            continue
        ckpt = load_checkpoint(study, trial)
        frontend = FrontEnd(**ckpt.frontend)
        general, built = None, {}  # int8 models of this run, reused on the test fold
        if missing:
            record.pop("test", None)  # a device model changes: the test figures are redone
            train_set, val_set = features.get("search", frontend)
            tune = _finetune_recipe(TrainConfig(**ckpt.train), epochs, lr_scale)
            job = _Job(
                study,
                store,
                trial,
                ckpt,
                tune,
                trained=ckpt.build_model(train_set),
                general=ckpt.build_int8(train_set),
                train_set=train_set,
                val_set=val_set,
                teacher_logits=teacher.logits() if uses_teacher(tune) else None,
                runtime=runtime,
            )
            general = job.general
        for device in missing:
            step += 1
            started = time.perf_counter()
            seed = finetune_seed(study_seed, trial.number, device)
            entry, built[device] = _finetune_device(job, device, seed)
            record["devices"][device] = entry
            record["devices"] = {d: record["devices"][d] for d in _device_order(record["devices"])}
            record_trial_attrs(study, trial, {_ATTR: record}, f"the model of device {device}")
            _remove_superseded(study, earlier, record)
            say(
                f"[{step}/{total}] trial {trial.number}, device {device}: "
                f"{_validation_line(entry)}, {time.perf_counter() - started:.0f} s"
            )
        train_set, test_set = features.get("test", frontend)
        if general is None:
            general = ckpt.build_int8(train_set)
        # the test view's training part is the search view's: models built on either are equal
        _measure_test(study, trial, general, built, record, devices, train_set, test_set)
        record_trial_attrs(study, trial, {_ATTR: record}, "the test-fold figures")
        _remove_superseded(study, earlier, record)
        say(_test_line(trial.number, record))
    return reload(study)


def _checkpoint_ids(record: Any) -> set[str]:
    """The device checkpoints a ``device_models`` record refers to."""
    models = record.get("devices") if isinstance(record, dict) else None
    if not isinstance(models, dict):
        return set()
    ids = (e.get("checkpoint_artifact") for e in models.values() if isinstance(e, dict))
    return {i for i in ids if isinstance(i, str) and i}


def _forget_lost(study: optuna.Study, trial: FrozenTrial, record: dict, progress: bool) -> None:
    """Drop from ``record`` the devices whose checkpoint file is gone (deleted because it was
    corrupt, or lost): they are fine-tuned anew, and the test fold measured again."""
    from nas_asc.search.artifacts import artifact_file

    say = reporter_for(progress).message
    for device, entry in list(record["devices"].items()):
        artifact = entry.get("checkpoint_artifact") if isinstance(entry, dict) else None
        path = artifact_file(study, artifact) if isinstance(artifact, str) and artifact else None
        if path is not None and path.is_file():
            continue
        del record["devices"][device]
        record.pop("test", None)
        say(
            f"note: trial {trial.number}'s model of device {device} has no checkpoint file "
            f"({path or 'none recorded'}); fine-tuning it anew"
        )


def _remove_superseded(study: optuna.Study, earlier: set[str], record: dict) -> None:
    """Once ``record`` is stored, delete the device checkpoints of the trial's ``earlier``
    record that it no longer refers to (fine-tuned with other settings, or fine-tuned anew),
    unless a record of any trial, loaded afresh from the database, still refers to one; the
    deleted ones leave ``earlier``."""
    from nas_asc.search.artifacts import remove_artifacts
    from nas_asc.search.holdout import reload

    stale = earlier - _checkpoint_ids(record)
    if not stale:
        return
    kept = set()
    for t in reload(study).get_trials(deepcopy=False):
        kept |= _checkpoint_ids(t.user_attrs.get(_ATTR))
        kept |= {t.user_attrs.get("checkpoint_artifact"), t.user_attrs.get("confusion_artifact")}
    remove_artifacts(study, sorted(stale - kept))
    earlier -= stale


@dataclass
class _Job:
    """What the device models of one trial share."""

    study: optuna.Study
    store: Any  # the study's FileSystemArtifactStore
    trial: FrozenTrial
    ckpt: Any  # the general model's Checkpoint
    tune: Any  # the fine-tuning TrainConfig
    trained: torch.nn.Module  # the general trained network (PTQ: float; QAT: fake-quantized)
    general: torch.nn.Module  # the general int8 model
    train_set: FeatureSet  # the training part
    val_set: FeatureSet  # the validation split
    teacher_logits: torch.Tensor | None  # indexed by meta.csv row; None: no distillation
    runtime: Any = None  # AccelOptions of the fine-tuning; None: the defaults (the CPU)


def _finetune_device(job: _Job, device: str, seed: int) -> tuple[dict, torch.nn.Module]:
    """Fine-tune, quantize, select and save one device model; its record and int8 model."""
    from torch.ao.quantization import disable_observer, enable_observer

    from nas_asc.search.artifacts import Checkpoint, calibration_indices
    from nas_asc.train.loop import evaluate, train
    from nas_asc.train.quantize import convert_qat, quantize_ptq

    ckpt, tune, logits = job.ckpt, job.tune, job.teacher_logits
    device_train = device_subset(job.train_set, device)
    device_val = device_subset(job.val_set, device)
    n_calib = min(len(device_train), tune.calibration_batches * tune.batch_size)
    model = copy.deepcopy(job.trained)  # every device starts from the general model
    torch.manual_seed(seed)  # dropout draws from the global stream
    if ckpt.quantization == "qat":
        # the fake-quantized network trains as it is ("ptq": train must not prepare it again);
        # its observers follow the device's activations, then freeze for the conversion
        model.apply(enable_observer)
        ptq = dataclasses.replace(tune, quantization="ptq")
        train(model, device_train, ptq, logits, seed, runtime=job.runtime)
        model.apply(disable_observer)
        int8 = convert_qat(model.eval())
    else:
        train(model, device_train, tune, logits, seed, runtime=job.runtime)
        idx = calibration_indices(len(device_train), seed, n_calib)
        int8 = quantize_ptq(model, device_train.batch(idx))
    n_val = len(device_val)
    val_general = evaluate(job.general, device_val).accuracy if n_val else None
    val_device = evaluate(int8, device_val).accuracy if n_val else None
    if not n_val:
        selected = False
        reason = f"no validation clips of device {device}: the general model serves it"
    else:
        selected = val_device > val_general
        verdict = "beats" if selected else "does not beat"
        kept = "the device model serves it" if selected else "the general model serves it"
        reason = (
            f"device model {val_device:.1%} {verdict} general {val_general:.1%} on {n_val} "
            f"validation clips: {kept}"
        )
    checkpoint = Checkpoint(
        family=ckpt.family,
        model_config=dict(ckpt.model_config),
        frontend=dict(ckpt.frontend),
        train=dataclasses.replace(tune, quantization=ckpt.quantization).to_dict(),
        state_dict=model.state_dict(),
        seed=seed,
        calibration={"seed": seed, "n": n_calib},
        complexity=dict(ckpt.complexity),
        pruned=ckpt.pruned,
        metrics={"device": device, "trial": job.trial.number, "int8_accuracy": val_device},
        quantization=ckpt.quantization,
        model_revision=ckpt.model_revision,
    )
    name = f"{job.trial.number}-{device}"
    artifact_id = _save_study_checkpoint(job.study, job.store, checkpoint, name)
    entry = {
        "checkpoint_artifact": artifact_id,
        "seed": seed,
        "train_clips": len(device_train),
        "validation_clips": n_val,
        "validation_general": val_general,
        "validation_device": val_device,
        "selected": bool(selected),
        "reason": reason,
    }
    return entry, int8


def _save_study_checkpoint(study, store, checkpoint, name: str) -> str:
    """Upload ``checkpoint`` as an artifact of the study (a finished trial takes none); its id."""
    from nas_asc._cache import torch_save
    from nas_asc.search.artifacts import to_plain, upload_file

    payload = to_plain(
        {
            f.name: getattr(checkpoint, f.name)
            for f in dataclasses.fields(checkpoint)
            if f.name != "state_dict"
        }
    )
    payload["state_dict"] = {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()}
    with tempfile.TemporaryDirectory(prefix="nas-asc-ckpt-") as tmp:
        path = os.path.join(tmp, f"trial-{name}-device-checkpoint.pt")
        torch_save(payload, path)
        return upload_file(study, store, path, "application/octet-stream")


def _device_entry(study: optuna.Study, trial: FrozenTrial, device: str) -> dict:
    record = trial.user_attrs.get(_ATTR)
    models = record.get("devices") if isinstance(record, dict) else None
    if not isinstance(models, dict) or device not in models:
        known = ", ".join(models) if isinstance(models, dict) and models else "none"
        raise NasAscError(
            f"trial {trial.number} of study {study.study_name!r} has no model for device "
            f"{device!r} (device models: {known}); fine-tune the trial first (nas-asc finetune)"
        )
    return models[device]


def _load_device_checkpoint(study: optuna.Study, number: int, device: str, artifact_id: str):
    from nas_asc.search.artifacts import read_checkpoint

    return read_checkpoint(
        study, artifact_id, f"trial {number}", f"device {device!r} ", _redo(study, number)
    )


def _redo(study: optuna.Study, number: int) -> str:
    """The fix for a device checkpoint that is missing or unreadable: fine-tuning the trial
    again with its recorded settings fine-tunes anew each device whose file is missing."""
    record = next(
        (t.user_attrs.get(_ATTR) for t in study.get_trials(deepcopy=False) if t.number == number),
        None,
    )
    settings = ""
    if isinstance(record, dict) and {"epochs", "lr_scale"} <= set(record):
        settings = f" --epochs {record['epochs']} --lr-scale {record['lr_scale']}"
    return (
        f"; delete the file if it is there and run nas-asc finetune --study {study.study_name} "
        f"--trials {number}{settings} again (it fine-tunes anew each device whose checkpoint "
        "file is missing)"
    )


def load_device_int8(
    study: optuna.Study, trial: FrozenTrial, device: str, train_set: FeatureSet
) -> torch.nn.Module:
    """The int8 model fine-tuned for ``device``, rebuilt bit for bit from its checkpoint.

    Args:
        study: the study (its artifact store holds the device checkpoints).
        trial: a fine-tuned trial, as loaded after :func:`finetune_study`.
        device: a device of the training part.
        train_set: the training part's features for the trial's front end (the first set of
            ``load_features(protocol.search_view(), frontend)`` or of the test view): a PTQ
            model is calibrated on the same clips of the device as when it was fine-tuned.

    Raises:
        NasAscError: no model for ``device``, its checkpoint missing, or ``train_set`` not the
            training part it was fine-tuned on.
    """
    return _rebuild(study, trial.number, device, _device_entry(study, trial, device), train_set)


def _rebuild(study, number: int, device: str, entry: dict, train_set: FeatureSet):
    from nas_asc.data.features import FrontEnd

    ckpt = _load_device_checkpoint(study, number, device, entry["checkpoint_artifact"])
    shape = FrontEnd(**ckpt.frontend).input_shape()
    if tuple(train_set.shape[1:]) != shape:
        raise NasAscError(
            f"train_set holds inputs of shape {tuple(train_set.shape[1:])}, but trial "
            f"{number}'s front end gives {shape}; load the training part with the trial's "
            "front end"
        )
    subset = device_subset(train_set, device)
    if len(subset) != entry["train_clips"]:
        raise NasAscError(
            f"train_set holds {len(subset)} clips of device {device!r}, but its model was "
            f"fine-tuned on {entry['train_clips']}; pass the training part of the study's "
            "protocol (load_features(protocol.search_view(), frontend)[0])"
        )
    return ckpt.build_int8(subset)


def _figures(pred: torch.Tensor, test_set: FeatureSet, seen: set[str]) -> dict[str, Any]:
    """Accuracy overall and per device; seen/unseen: the mean over those devices' accuracies."""
    hit = (pred == test_set.y).numpy()
    devices = np.asarray(test_set.devices)
    by_device = {d: float(hit[devices == d].mean()) for d in _device_order(test_set.devices)}
    seen_acc = [acc for d, acc in by_device.items() if d in seen]
    unseen_acc = [acc for d, acc in by_device.items() if d not in seen]
    return {
        "accuracy": float(hit.mean()),
        "accuracy_by_device": by_device,
        "seen_accuracy": float(np.mean(seen_acc)) if seen_acc else None,
        "unseen_accuracy": float(np.mean(unseen_acc)) if unseen_acc else None,
    }


def _measure_test(study, trial, general, built, record, devices, train_set, test_set) -> None:
    """The general model and the combined system on the test fold, into ``record``; device
    models not in ``built`` (fine-tuned by an earlier run) are rebuilt from their checkpoints."""
    from nas_asc.train.loop import predict

    general = predict(general, test_set).argmax(1)
    combined = general.clone()
    hit = (general == test_set.y).numpy()
    clip_devices = np.asarray(test_set.devices)
    for device in devices:
        entry = record["devices"][device]
        mask = torch.from_numpy(clip_devices == device)
        if not mask.any():
            entry["test_general"] = entry["test_device"] = None
            continue
        if device in built:
            model = built[device]
        else:
            model = _rebuild(study, trial.number, device, entry, train_set)
        pred = predict(model, test_set.batch(mask)).argmax(1)
        # float64 means, as evaluate computes them
        entry["test_general"] = float(hit[mask.numpy()].mean())
        entry["test_device"] = float((pred == test_set.y[mask]).numpy().mean())
        if entry["selected"]:
            combined[mask] = pred
    seen = set(devices)
    record["test"] = {
        "clips": len(test_set),
        "general": _figures(general, test_set, seen),
        "combined": _figures(combined, test_set, seen),
    }


def _pct(value) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _validation_line(entry: dict) -> str:
    if entry["validation_clips"] == 0:
        return "no validation clips (general model kept)"
    choice = "selected" if entry["selected"] else "general kept"
    return (
        f"validation int8 general {_pct(entry['validation_general'])} -> device "
        f"{_pct(entry['validation_device'])} ({choice})"
    )


def _test_line(number: int, record: dict) -> str:
    test = record["test"]
    general, combined = test["general"], test["combined"]
    chosen = sum(e["selected"] for e in record["devices"].values())
    return (
        f"  trial {number} on the test fold ({test['clips']:,} clips): int8 general "
        f"{_pct(general['accuracy'])} -> with device models {_pct(combined['accuracy'])} "
        f"({chosen} of {len(record['devices'])} device models selected; seen devices "
        f"{_pct(general['seen_accuracy'])} -> {_pct(combined['seen_accuracy'])}, unseen "
        f"{_pct(general['unseen_accuracy'])} -> {_pct(combined['unseen_accuracy'])})"
    )


def format_finetune(study: optuna.Study, trials: Sequence[int] | None = None) -> str:
    """A table per fine-tuned trial: per test device, then overall, seen and unseen devices, the
    general model's test accuracy beside the system with device models', whether the device's
    model was selected and the validation accuracies that decided it."""
    wanted = None if trials is None else set(trials)
    blocks = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        record = t.user_attrs.get(_ATTR)
        if not isinstance(record, dict) or (wanted is not None and t.number not in wanted):
            continue
        blocks.append(_trial_table(t.number, record))
    return "\n\n".join(blocks) if blocks else "no fine-tuned trials"


def _trial_table(number: int, record: dict) -> str:
    models = record.get("devices", {})
    test = record.get("test") or {}
    general, combined = test.get("general", {}), test.get("combined", {})
    chosen = sum(bool(e.get("selected")) for e in models.values())
    title = (
        f"trial {number}: device models fine-tuned {record.get('epochs')} epoch(s) at "
        f"{record.get('lr_scale')} x lr, {chosen} of {len(models)} selected on validation"
    )
    if not test:
        title += " (test fold not measured yet: fine-tune again to finish)"
    rows = []
    by_general = general.get("accuracy_by_device", {})
    by_combined = combined.get("accuracy_by_device", {})
    for device in _device_order([*by_general, *models]):
        entry = models.get(device)
        rows.append(
            (
                device,
                _cell(by_general.get(device)),
                _cell(by_combined.get(device)),
                "-" if entry is None else ("yes" if entry["selected"] else "no"),
                "-" if entry is None else _cell(entry["validation_general"]),
                "-" if entry is None else _cell(entry["validation_device"]),
            )
        )
    for label in ("overall", "seen", "unseen"):
        key = "accuracy" if label == "overall" else f"{label}_accuracy"
        rows.append((label, _cell(general.get(key)), _cell(combined.get(key)), "", "", ""))
    header = (
        "device",
        "general test %",
        "with device models test %",
        "selected",
        "val general %",
        "val device %",
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _cell(value) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"
