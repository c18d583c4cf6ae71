"""Per-trial artifacts in an Optuna artifact store: checkpoints and confusion-matrix images.

Every trained trial keeps what export needs, so export never retrains:

* a **checkpoint** (``checkpoint.pt``, a plain dictionary readable with ``torch.load(...,
  weights_only=True)``): model family and config, front end, training recipe, the trained
  weights, how they became int8 (``quantization``), the structure left by filter pruning if
  any, and the measured complexity. With post-training quantization (``"ptq"``) the weights are
  the float model's and the calibration subset (seed and size) is kept, so the int8 model is
  rebuilt bit for bit; with quantization-aware training (``"qat"``) they are the fake-quantized
  model's (weights, folded BatchNorm statistics and the learned activation ranges), from which
  the int8 model is converted again, also bit for bit;
* a **confusion-matrix image** (PNG) of the int8 model on the validation split, which the Optuna
  dashboard shows on the trial page.

Both are uploaded with :func:`optuna.artifacts.upload_artifact` to a
:class:`~optuna.artifacts.FileSystemArtifactStore`; the trial's user attributes
``checkpoint_artifact`` and ``confusion_artifact`` hold their artifact ids, and the study's user
attribute ``artifact_dir`` the store's folder. With the default SQLite storage
``studies/<study>.db`` the store is ``studies/<study>/artifacts``; workers of one study on several
machines must share that folder (or pass the same ``--artifacts`` path on a shared file system).
"""

from __future__ import annotations

import contextlib
import io
import numbers
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from nas_asc._cache import torch_save
from nas_asc._paths import create_dir
from nas_asc.errors import NasAscError
from nas_asc.study.record import StudyRecord
from nas_asc.study.storage import artifact_store_path, sqlite_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "QUANTIZATION_MODES",
    "Checkpoint",
    "artifact_file",
    "calibration_indices",
    "default_artifact_dir",
    "open_artifact_store",
    "remove_artifacts_of_failed_trials",
    "study_artifact_store",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "remove_artifacts",
    "save_confusion_image",
    "to_plain",
    "upload_file",
    "select_trials",
]

CHECKPOINT_FORMAT = "nas-asc-checkpoint/1"
_ARTIFACT_ATTR = "artifacts:"  # Optuna's key prefix of a trial's artifact records


def default_artifact_dir(storage: str, study_name: str) -> Path:
    """Artifact folder of a study: beside its SQLite file, else ``studies/<study>/artifacts``."""
    db = sqlite_path(storage)
    if db is not None:
        return db.parent / study_name / "artifacts"
    return Path("studies") / study_name / "artifacts"


def open_artifact_store(path: str | Path) -> FileSystemArtifactStore:
    """Open (creating it if needed) a file-system artifact store at ``path``."""
    path = create_dir(
        path, f"the artifact folder {path}", "pass --artifacts with a writable folder"
    )
    return FileSystemArtifactStore(str(path))


def study_artifact_store(study: optuna.Study) -> FileSystemArtifactStore:
    """The artifact store recorded in ``study`` by the search that ran it."""
    recorded = StudyRecord.of(study).artifact_dir
    if not recorded:
        raise NasAscError(
            f"study {study.study_name!r} records no artifact folder (it was run without "
            "checkpoints); run the search again with this version of nas-asc"
        )
    if not Path(recorded).is_dir():
        raise NasAscError(
            f"the artifact folder {recorded} of study {study.study_name!r} does not exist; run "
            "from the folder the search ran in, or restore the folder"
        )
    return FileSystemArtifactStore(recorded)


def calibration_indices(n_train: int, seed: int, n_calibration: int) -> torch.Tensor:
    """Training clips used to calibrate a trial's int8 conversion (deterministic in ``seed``)."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return order[: min(n_train, n_calibration)]


QUANTIZATION_MODES = ("ptq", "qat")


@dataclass
class Checkpoint:
    """Everything needed to rebuild a trained trial's float and int8 models.

    Checkpoints written before ``quantization`` existed load as ``"ptq"``.
    """

    family: str  # registered model family
    model_config: dict[str, Any]  # fields of the family's config dataclass
    frontend: dict[str, Any]  # nas_asc.data.features.FrontEnd fields
    train: dict[str, Any]  # nas_asc.train.loop.TrainConfig fields
    state_dict: dict[str, torch.Tensor]  # ptq: float weights; qat: the prepared model's state
    seed: int  # the trial's seed
    calibration: dict[str, int]  # {"seed": ..., "n": ...}: see calibration_indices (ptq only)
    complexity: dict[str, Any]  # params, param_bytes, macs, input_shape as counted
    pruned: dict[str, int] | None = None  # filters kept per pruned layer, if pruned
    metrics: dict[str, Any] = field(default_factory=dict)  # accuracies measured in the trial
    format: str = CHECKPOINT_FORMAT
    quantization: str = "ptq"  # "ptq" (post-training static) or "qat" (quantization-aware)
    model_revision: int = 1  # the family's revision when trained (checkpoints before it: 1)

    def __post_init__(self) -> None:
        self.model_config = _upgrade_model_config(self.family, self.model_config)
        if self.quantization not in QUANTIZATION_MODES:
            raise NasAscError(
                f"checkpoint quantization must be one of {list(QUANTIZATION_MODES)}, got "
                f"{self.quantization!r}; write the checkpoint with one of them"
            )

    def build_architecture(self) -> torch.nn.Module:
        """The untrained float network with the trial's structure (pruned layers cut).

        A checkpoint of another revision of its family is refused (``NasAscError``): its weights
        belong to a network that this nas-asc no longer builds.
        """
        from nas_asc.models import create_model
        from nas_asc.models._registry import get_model_revision

        revision = get_model_revision(self.family)
        if self.model_revision != revision:
            raise NasAscError(
                f"this checkpoint holds a {self.family} network of revision "
                f"{self.model_revision}, but the {self.family} family changed (now revision "
                f"{revision}: it computes its authors' function); retrain the trial, or use the "
                f"nas-asc release that trained it"
            )
        model = create_model(self.family, **self.model_config)
        if self.pruned:
            for layer, kept in self.pruned.items():
                model.prune_filters(layer, torch.arange(kept))
        return model

    def build_model(self, example_inputs: torch.Tensor | None = None) -> torch.nn.Module:
        """The trained network as it was trained, weights loaded strictly, in eval mode.

        ``"ptq"``: the float model. ``"qat"``: the fake-quantized model of
        :func:`nas_asc.train.quantize.prepare_qat`, prepared on ``example_inputs`` (model
        inputs, e.g. ``train_set.x[:1]``), which a QAT checkpoint requires.
        """
        model = self.build_architecture()
        if self.quantization == "qat":
            from nas_asc.train.quantize import prepare_qat

            if example_inputs is None:
                raise NasAscError(
                    "a QAT checkpoint is rebuilt by preparing its network on example inputs; "
                    "pass model inputs, e.g. build_model(train_set.x[:1])"
                )
            model = prepare_qat(model, _rows(example_inputs, slice(0, 1)))
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    def build_fp32(self, train_x: torch.Tensor) -> torch.nn.Module:
        """The trained network computing in float (eval mode), to measure fp32 accuracy.

        For ``"qat"`` this is the prepared model with its fake quantizers and observers off
        (BatchNorm stays folded into the weights, unrounded).

        Args:
            train_x: the training split's inputs, or its FeatureSet (only the first clip is
                used, for QAT).
        """
        model = self.build_model(_rows(train_x, slice(0, 1)))
        if self.quantization == "qat":
            from torch.ao.quantization import disable_fake_quant, disable_observer

            model.apply(disable_fake_quant)
            model.apply(disable_observer)
        return model

    def build_int8(self, train_x: torch.Tensor) -> torch.nn.Module:
        """The trial's int8 model, rebuilt exactly as the search built it.

        ``"ptq"``: the float model calibrated on the checkpoint's calibration clips of
        ``train_x`` (:func:`calibration_indices`); ``"qat"``: the prepared model converted.

        Args:
            train_x: the training split's FeatureSet of the trial's front end (or its inputs,
                ``FeatureSet.x``), in the order :func:`~nas_asc.data.features.load_features`
                gives them; only the calibration clips are read.
        """
        from nas_asc.train.quantize import convert_qat, quantize_ptq

        if self.quantization == "qat":
            return convert_qat(self.build_model(_rows(train_x, slice(0, 1))))
        idx = calibration_indices(len(train_x), self.calibration["seed"], self.calibration["n"])
        return quantize_ptq(self.build_model(), _rows(train_x, idx))


def _rows(inputs, idx) -> torch.Tensor:
    """Model inputs ``idx`` of a tensor of inputs or a FeatureSet (read without materializing
    the whole split)."""
    return inputs.batch(idx) if hasattr(inputs, "batch") else inputs[idx]


def _upgrade_model_config(family: str, config: dict[str, Any]) -> dict[str, Any]:
    """A model config written by an earlier nas-asc, in the fields the family has now.

    BC-ResNet and BC-Res2Net once had ``resnorm: bool``; it became ``norm`` (``"resnorm"`` or
    ``"none"``, now also ``"adaresnorm"``).
    """
    if family in ("bcresnet", "bcres2net") and "resnorm" in config and "norm" not in config:
        config = dict(config)
        config["norm"] = "resnorm" if config.pop("resnorm") else "none"
    return config


def to_plain(value: Any) -> Any:
    """Tuples become lists so the checkpoint loads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class _Recorder:
    """An artifact store that hands writes on to ``store`` and remembers what it wrote, so that
    an upload that fails halfway (a full disk in the store or under the study's database)
    takes its file back; a write that fails names the store's folder."""

    def __init__(self, store: FileSystemArtifactStore, folder: str) -> None:
        self.store, self.folder, self.written = store, folder, []

    def write(self, artifact_id: str, content_body) -> None:
        self.written.append(artifact_id)
        try:
            self.store.write(artifact_id, content_body)
        except OSError as exc:
            if exc.filename is None:  # shutil's copy names no file
                raise OSError(exc.errno, exc.strerror, self.folder) from exc
            raise

    def take_back(self) -> None:
        for artifact_id in self.written:
            with contextlib.suppress(ArtifactNotFound, OSError):
                self.store.remove(artifact_id)


def upload_file(
    trial: optuna.Trial, store: FileSystemArtifactStore, path: str, mimetype: str
) -> str:
    """:func:`optuna.artifacts.upload_artifact`, all or nothing: either the file is in the store
    and the trial records it, or neither."""
    recorder = _Recorder(store, artifact_store_path(store))
    try:
        return upload_artifact(
            artifact_store=recorder, file_path=path, study_or_trial=trial, mimetype=mimetype
        )
    except BaseException:
        recorder.take_back()
        raise


def remove_artifacts_of_failed_trials(
    study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]
) -> int:
    """Delete the files of the artifacts that failed trials among ``trials`` uploaded: a trial
    stopped after its upload (a full disk at its last write, a killed worker) is re-run as a new
    trial that uploads its own, and nothing reads a failed trial's. Files already gone are fine;
    a file that cannot be deleted is left (this is clean-up, never a reason to stop). Returns
    the number of files deleted."""
    ids = [
        key.removeprefix(_ARTIFACT_ATTR)
        for t in trials
        if t.state == optuna.trial.TrialState.FAIL
        for key in t.system_attrs
        if key.startswith(_ARTIFACT_ATTR)
    ]
    return remove_artifacts(study, ids)


def remove_artifacts(study: optuna.Study, artifact_ids: Sequence[str]) -> int:
    """Delete the files of ``artifact_ids`` from the study's artifact folder; the caller has
    made sure that no record refers to them. Files already gone are fine; a file that cannot be
    deleted is left (clean-up, never a reason to stop). Returns the number of files deleted."""
    folder = StudyRecord.of(study).artifact_dir if artifact_ids else None
    if not folder:
        return 0
    store, removed = FileSystemArtifactStore(folder), 0
    for artifact_id in artifact_ids:
        with contextlib.suppress(ArtifactNotFound, OSError, ValueError):
            store.remove(artifact_id)
            removed += 1
    return removed


def _checkpoint_file(folder: str, number: int) -> str:
    """Where a trial's checkpoint is written before it is uploaded to the artifact store."""
    return os.path.join(folder, f"trial-{number}-checkpoint.pt")


def save_checkpoint(
    trial: optuna.Trial, store: FileSystemArtifactStore, checkpoint: Checkpoint
) -> str:
    """Upload ``checkpoint`` as an artifact of ``trial``; record its id; return the id."""
    payload = to_plain({k: v for k, v in asdict(checkpoint).items() if k != "state_dict"})
    payload["state_dict"] = {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()}
    with tempfile.TemporaryDirectory(prefix="nas-asc-ckpt-") as tmp:
        path = _checkpoint_file(tmp, trial.number)
        torch_save(payload, path)  # a full disk: OSError, the machine's fault, not the trial's
        artifact_id = upload_file(trial, store, path, "application/octet-stream")
    trial.set_user_attr("checkpoint_artifact", artifact_id)
    return artifact_id


def load_checkpoint(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Checkpoint:
    """Download and read the checkpoint of ``trial`` from the study's artifact store."""
    artifact_id = trial.user_attrs.get("checkpoint_artifact")
    if not artifact_id:
        status = trial.user_attrs.get("status", trial.state.name.lower())
        raise NasAscError(
            f"trial {trial.number} of study {study.study_name!r} has no checkpoint "
            f"(status: {status}); only trained trials can be exported"
        )
    return read_checkpoint(study, artifact_id, f"trial {trial.number}")


def artifact_file(study: optuna.Study, artifact_id: str) -> Path:
    """The file that holds artifact ``artifact_id`` in the study's artifact folder."""
    return Path(StudyRecord.of(study).artifact_dir or "") / artifact_id


def read_checkpoint(
    study: optuna.Study, artifact_id: str, owner: str, prefix: str = "", fix: str = ""
) -> Checkpoint:
    """Read checkpoint ``artifact_id`` from the study's artifact store: the one reader of
    checkpoints, for a trial's and for a fine-tuned device's.

    ``owner`` (``"trial 3"``), ``prefix`` (``"device 'b' "``) and ``fix`` (``"; run nas-asc
    finetune ... again"``; by default: restore the file or leave the trial out) word the errors.
    Any file that is not a readable checkpoint of this
    nas-asc (missing, truncated, garbage, another format, fields missing) is one
    ``NasAscError`` line naming the file, never torch's or pickle's exception.
    """
    store = study_artifact_store(study)
    where = artifact_file(study, artifact_id)
    what = f"{prefix}checkpoint of {owner}"
    fix = fix or (
        f"; restore the file from a backup, or leave {owner} out (name other trials with "
        "--trials; a search trains new ones)"
    )
    try:
        with store.open_reader(artifact_id) as reader:
            data = reader.read()
    except (ArtifactNotFound, FileNotFoundError):
        raise NasAscError(f"{what}, {where}, is missing from its artifact folder{fix}") from None
    except (OSError, ValueError) as exc:  # ValueError: an artifact id that leaves the folder
        raise NasAscError(f"{what}, {where}, cannot be read ({_first_line(exc)}){fix}") from None
    try:  # the whole file is in memory: torch reads no file it could leave open
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or garbage: torch, zip and pickle raise many types
        raise NasAscError(
            f"{what}, {where}, is corrupt or truncated ({len(data):,} bytes; "
            f"{_first_line(exc)}){fix}"
        ) from None
    if not isinstance(payload, dict):
        raise NasAscError(
            f"{what}, {where}, holds a {type(payload).__name__}, not a nas-asc checkpoint "
            f"(a dictionary of format {CHECKPOINT_FORMAT!r}){fix}"
        )
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise NasAscError(
            f"{what}, {where}, has format {payload.get('format')!r}; this nas-asc reads "
            f"{CHECKPOINT_FORMAT!r}{fix}"
        )
    problem = _payload_problem(payload)
    if problem:
        raise NasAscError(f"{what}, {where}, is malformed ({problem}){fix}")
    return Checkpoint(**payload)


def _first_line(exc: BaseException) -> str:
    """``Type: first sentence of the message`` of an exception (its type alone if it has none);
    what follows is torch's advice for trusted files (``weights_only=False``), not ours."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = re.split(r"(?<=[.!?])\s", text.splitlines()[0], maxsplit=1)[0]
    return f"{type(exc).__name__}: {first[:160]}"


def _payload_problem(payload: dict) -> str | None:
    """What keeps a checkpoint dictionary from being a :class:`Checkpoint`, or None."""
    known = {f.name: f for f in fields(Checkpoint)}
    unknown = sorted(set(payload) - set(known))
    if unknown:
        return f"unknown fields {unknown}"
    required = [
        n for n, f in known.items() if MISSING is f.default and MISSING is f.default_factory
    ]
    absent = [n for n in required if n not in payload]
    if absent:
        return f"fields {absent} missing"
    for name in ("model_config", "frontend", "train", "state_dict", "calibration", "complexity"):
        if not isinstance(payload[name], dict):
            return f"{name} is a {type(payload[name]).__name__}, not a dictionary"
    if not all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values()):
        return "state_dict holds values that are not tensors"
    return None


def _confusion_png(confusion: Any, labels: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    try:
        im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted scene")
        ax.set_ylabel("true scene")
        ax.set_title(title, fontsize=10)
        for i in range(rates.shape[0]):
            for j in range(rates.shape[1]):
                if counts[i, j]:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{int(counts[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=colour,
                    )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true scene")
        # fixed margins that fit the ten TAU scene names (measuring them, tight_layout, would
        # draw the figure twice: a third of a second per trial)
        fig.subplots_adjust(left=0.2, right=0.86, bottom=0.24, top=0.94)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def save_confusion_image(
    trial: optuna.Trial,
    store: FileSystemArtifactStore,
    confusion: Any,
    labels: list[str],
    title: str,
) -> str:
    """Upload a PNG of ``confusion`` (rows = true scene) for ``trial``; record and return its id."""
    png = _confusion_png(confusion, labels, title)
    with tempfile.TemporaryDirectory(prefix="nas-asc-cm-") as tmp:
        path = os.path.join(tmp, f"trial-{trial.number}-confusion.png")
        Path(path).write_bytes(png)
        artifact_id = upload_file(trial, store, path, "image/png")
    trial.set_user_attr("confusion_artifact", artifact_id)
    return artifact_id


def select_trials(study: optuna.Study, trials: Sequence[int] | None, verb: str) -> list[Any]:
    """The trials to ``verb`` (export, evaluate): ``trials`` by number, each trained with a
    checkpoint, or the Pareto set when None. Raises ``NasAscError`` naming the bad number."""
    from nas_asc.study.front import front_trials

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    if trials is None:
        chosen = [t.number for t in front_trials(study)]
        if not chosen:
            raise NasAscError(
                f"study {study.study_name!r} has no trained trial within its budget, so its "
                "Pareto set is empty; run more trials, or name trials with --trials"
            )
    else:
        if len(trials) == 0:
            raise NasAscError(
                "no trial numbers given; name trials (e.g. --trials 3,5) or leave out --trials "
                f"to {verb} the Pareto set"
            )
        chosen: list[int] = []
        for n in trials:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral):
                raise NasAscError(f"trial numbers must be integers, got {n!r}; e.g. --trials 3,5")
            if int(n) not in chosen:
                chosen.append(int(n))
    selected = []
    for n in chosen:
        trial = by_number.get(n)
        if trial is None:
            known = f"0-{max(by_number)}" if by_number else "none"
            raise NasAscError(
                f"study {study.study_name!r} has no trial {n} (trials: {known}); pick trial "
                f"numbers from the report, or leave out --trials to {verb} the Pareto set"
            )
        if not trial.user_attrs.get("checkpoint_artifact"):
            status = trial.user_attrs.get("status", trial.state.name.lower())
            raise NasAscError(
                f"trial {n} of study {study.study_name!r} has no checkpoint (status: {status}); "
                f"only trained trials have one to {verb}, e.g. the Pareto set (leave out --trials)"
            )
        selected.append(trial)
    return selected
