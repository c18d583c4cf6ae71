"""DCASE 2025 Task 1 inference packages from a study (``nas-asc export --format dcase2025``).

The 2025 task asks for an installable Python package named after the submission label
(``Surname_INST_task1``) with one module per submission (``Surname_INST_task1_1`` ... ``_4``),
each implementing the organizers' inference API (``CPJKU/dcase2025_task1_inference``):
``load_model(model_file_path=None)``, ``load_inputs(file_paths, device_ids, model)``,
``get_model_for_device(model, device_id)`` and ``predict(file_paths, device_ids,
model_file_path=None, use_cuda=True, batch_size=64)``, the last returning per-file logits and
the class order. :func:`export_dcase2025` writes one for up to four trials of a study:

* each submission is a trial's int8 general model and, where ``nas-asc finetune`` selected one,
  an int8 model per recording device (``"unknown"`` and any device without its own model get the
  general one), as stand-alone networks (:mod:`nas_asc.deploy.netgen`) that compute
  exactly what nas-asc measured, with the front end and checkpoints they need and nothing of
  nas-asc (:mod:`nas_asc.deploy.runtime` is copied in);
* without ``trials``, the (up to) four Pareto trials whose set has the largest hypervolume
  (Optuna's, on the study's validation objectives normalized by the budget) are chosen, and the
  reasons are printed and written to the package README;
* before the folder is put in place, the package is imported in a fresh interpreter in which
  nas-asc cannot be imported, and the checker's method runs on every device ID (``a``, ``b``,
  ``c``, ``s1``-``s10``, ``unknown``): every sub-model must be within the budget at exactly the
  MACs and bytes nas-asc counted (and recorded, for a study searched under the ``dcase2025``
  rule), and ``predict`` on the test fold must give the top-1 scene of nas-asc's int8 models on
  at least :data:`MIN_AGREEMENT` of the clips, within ``tolerance_pp`` of the accuracy the study
  recorded. A package that fails is not left behind;
* the package is written in a hidden folder next to ``--out`` (``.<out>.tmp-<pid>-<random>``)
  and renamed when checked; such a folder that a killed export left is removed by the next
  export into the same parent folder (:func:`remove_stale_workdirs`: only if its writer no
  longer runs);
* the package ships ``test_complexity.py``, which prints what the organizers' checker computes,
  so every command its README names runs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from nas_asc.deploy import runtime
from nas_asc.errors import NasAscError
from nas_asc.progress import reporter_for

__all__ = [
    "DEVICE_IDS",
    "MAX_SUBMISSIONS",
    "MIN_AGREEMENT",
    "PackageResult",
    "check_label",
    "choose_submissions",
    "export_dcase2025",
    "remove_stale_workdirs",
]

MAX_SUBMISSIONS = 4  # the task's limit of submissions per participant
MIN_AGREEMENT = 0.99  # share of test clips on which the package must predict nas-asc's scene
#: The device IDs the organizers' checker runs (``test_complexity.py``), plus ``unknown``.
DEVICE_IDS = ("a", "b", "c", *(f"s{i}" for i in range(1, 11)), "unknown")
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9]+_task1")
_HERE = Path(__file__).resolve().parent


@dataclass
class PackageResult:
    """A written, checked inference package.

    Attributes:
        directory: the package's folder (holds ``pyproject.toml``).
        label: the submission label, also the import name.
        submissions: per submission ``{"index", "trial", "devices", "per_device", "max_macs",
            "max_param_bytes", "agreement", "accuracy", "recorded_accuracy"}``.
        choice: why these trials (printed and in the README).
    """

    directory: Path
    label: str
    submissions: list[dict[str, Any]] = field(default_factory=list)
    choice: list[str] = field(default_factory=list)


def check_label(label: str) -> str:
    """The submission label, or a one-line error: ``Surname_INST_task1`` (a Python identifier:
    letters and digits, a surname, the institute's abbreviation, ``task1``)."""
    if not isinstance(label, str) or not label.isidentifier() or not _LABEL.fullmatch(label):
        raise NasAscError(
            f"--label {label!r} is not a DCASE submission label; write Surname_INST_task1 "
            "(letters and digits: the first author's surname, the institute's abbreviation, "
            "task1), e.g. Schmid_CPJKU_task1"
        )
    return label


# --------------------------------------------------------------------------------------------
# Choosing the submissions
# --------------------------------------------------------------------------------------------


def _points(study: optuna.Study, numbers: Sequence[int]) -> dict[int, np.ndarray]:
    """Loss vectors ``(-accuracy, MACs / limit, bytes / limit)`` of trials, on validation."""
    from nas_asc.report.hypervolume import loss_point, reference_point

    ref = reference_point(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    return {n: loss_point(by_number[n].values, ref) for n in numbers}


def choose_submissions(
    study: optuna.Study, k: int = MAX_SUBMISSIONS
) -> tuple[list[int], list[str]]:
    """Up to ``k`` Pareto trials whose set has the largest hypervolume, and the reasons.

    The objectives are the study's validation figures (int8 accuracy, MACs, parameter bytes),
    normalized as the report's hypervolume is (reference: chance accuracy and the budget); the
    test fold plays no part. Every subset of ``k`` front trials is tried (the first in trial
    order wins a tie); a front of ``k`` or fewer is taken whole.
    """
    from nas_asc.report.hypervolume import hypervolume, reference_point
    from nas_asc.report.pareto import pareto_frame

    front = sorted(int(n) for n in pareto_frame(study)["trial"])
    if not front:
        raise NasAscError(
            f"study {study.study_name!r} has no trained trial within its budget, so its Pareto "
            "set is empty; run more trials, or name trials with --trials"
        )
    ref = reference_point(study)
    points = _points(study, front)
    total = hypervolume(list(points.values()), ref)
    if len(front) <= k:
        chosen = front
        head = f"the Pareto front has {len(front)} trial(s), at most {k} may be submitted: all"
    else:
        combos = itertools.combinations(front, k)
        if math.comb(len(front), k) > 50_000:  # greedy beyond that: each step the best gain
            chosen = []
            for _ in range(k):
                rest = [n for n in front if n not in chosen]
                chosen.append(
                    max(
                        rest,
                        key=lambda n: hypervolume([points[m] for m in [*chosen, n]], ref),
                    )
                )
            chosen.sort()
        else:
            chosen = list(max(combos, key=lambda c: hypervolume([points[n] for n in c], ref)))
        got = hypervolume([points[n] for n in chosen], ref)
        head = (
            f"{k} of the {len(front)} Pareto trials whose set has the largest hypervolume: "
            f"{got:.4f} of the whole front's {total:.4f} ({got / total:.1%})"
            if total > 0
            else f"{k} of the {len(front)} Pareto trials"
        )
    reasons = [
        f"chose trial(s) {', '.join(map(str, chosen))}: {head} (Optuna's hypervolume on the "
        f"validation objectives; reference: {ref.describe()})"
    ]
    whole = hypervolume([points[n] for n in chosen], ref)
    for n in chosen:
        alone = whole - hypervolume([points[m] for m in chosen if m != n], ref)
        acc, macs, nbytes = -points[n][0], points[n][1], points[n][2]
        reasons.append(
            f"trial {n}: validation int8 {acc:.1%}, {macs:.1%} of the MAC budget, {nbytes:.1%} of "
            f"the parameter budget; hypervolume only it adds: {alone:.4f}"
        )
    return chosen, reasons


# --------------------------------------------------------------------------------------------
# Building one submission
# --------------------------------------------------------------------------------------------


@dataclass
class _Built:
    index: int
    trial: Any
    family: str
    frontend: Any
    mean: float
    std: float
    networks: dict[str, Any]  # model name ("general", "b", ...) -> Standalone
    int8: dict[str, torch.nn.Module]  # model name -> nas-asc's int8 model
    per_device: dict[str, dict[str, int]]  # device id -> {"MACs", "Params"}
    expected: np.ndarray  # nas-asc's int8 top-1 per test clip
    recorded_accuracy: float
    recorded_what: str


def _device_models(trial, wanted: bool | None, study_name: str) -> list[str]:
    """Devices with their own (selected) model in ``trial``, per ``wanted`` (None: if any)."""
    record = trial.user_attrs.get("device_models")
    complete = isinstance(record, dict) and "test" in record
    if wanted is False:
        return []
    if not complete:
        if wanted:
            raise NasAscError(
                f"trial {trial.number} of study {study_name!r} has no device models (or their "
                f"fine-tuning did not finish); run nas-asc finetune --study {study_name} "
                f"--trials {trial.number} first, or leave out --device-models"
            )
        return []
    return [d for d, r in record["devices"].items() if r.get("selected")]


def _build(study, index, trial, devices, features, progress) -> _Built:
    from nas_asc.data.features import FrontEnd
    from nas_asc.deploy.netgen import checker_count, standalone
    from nas_asc.search.artifacts import load_checkpoint
    from nas_asc.train.loop import predict

    say = reporter_for(progress).message
    ckpt = load_checkpoint(study, trial)
    frontend = FrontEnd(**ckpt.frontend)
    train_set, test_set = features(frontend)
    int8 = {"general": ckpt.build_int8(train_set)}
    if devices:
        from nas_asc.finetune import load_device_int8

        for device in devices:
            int8[device] = load_device_int8(study, trial, device, train_set)
    example = test_set.batch(slice(0, 1))
    networks = {name: standalone(model, example) for name, model in int8.items()}
    shape = (1, *frontend.input_shape())
    counts = {name: checker_count(net.module, shape) for name, net in networks.items()}
    per_device = {}
    for device in DEVICE_IDS:
        macs, nbytes = counts[device if device in networks else "general"]
        per_device[device] = {"MACs": macs, "Params": nbytes}
    expected = predict(int8["general"], test_set).argmax(1).numpy()
    clip_devices = np.array(test_set.devices)
    for device in devices:
        mask = clip_devices == device
        if mask.any():
            rows = torch.from_numpy(np.flatnonzero(mask))
            expected[mask] = predict(int8[device], test_set.batch(rows)).argmax(1).numpy()
    if devices:
        recorded = trial.user_attrs["device_models"]["test"]["combined"]["accuracy"]
        what = "the test-fold accuracy nas-asc finetune recorded for the system with device models"
    else:
        recorded = trial.user_attrs.get("test_int8_accuracy")
        what = "the test-fold int8 accuracy recorded when the search ended"
        if recorded is None:
            raise NasAscError(
                f"trial {trial.number} has no test-fold figure; run nas-asc search (it measures "
                "the Pareto set on the test fold when it ends) before exporting it"
            )
    own = f", own models for {', '.join(devices)}" if devices else ""
    say(
        f"submission {index}: trial {trial.number} ({ckpt.family}{own}), "
        f"{max(c[0] for c in counts.values()):,} MACs and "
        f"{max(c[1] for c in counts.values()):,} parameter bytes at most per device"
    )
    return _Built(
        index,
        trial,
        ckpt.family,
        frontend,
        train_set.mean,
        train_set.std,
        networks,
        int8,
        per_device,
        expected,
        float(recorded),
        what,
    )


def _check_counts(built: _Built, budget, study_name: str) -> None:
    """Every device's sub-model within the budget; counted as the trial recorded it (rule
    ``dcase2025``)."""
    worst_macs = max(c["MACs"] for c in built.per_device.values())
    worst_bytes = max(c["Params"] for c in built.per_device.values())
    if worst_macs > budget.max_macs or worst_bytes > budget.max_param_bytes:
        raise NasAscError(
            f"trial {built.trial.number} is over the DCASE 2025 budget as its checker counts it: "
            f"{worst_macs:,} MACs (limit {budget.max_macs:,}), {worst_bytes:,} parameter bytes "
            f"(limit {budget.max_param_bytes:,}); choose another trial, or search with "
            "--budget dcase2025, which counts this way"
        )
    if budget.rule != "dcase2025":
        return
    recorded = (built.trial.user_attrs.get("macs"), built.trial.user_attrs.get("param_bytes"))
    for name in built.networks:
        device = "unknown" if name == "general" else name
        got = (built.per_device[device]["MACs"], built.per_device[device]["Params"])
        if got != recorded:
            raise NasAscError(
                f"trial {built.trial.number} of study {study_name!r}: the packaged {name} model "
                f"counts {got[0]:,} MACs and {got[1]:,} bytes, but the search recorded "
                f"{recorded[0]:,} and {recorded[1]:,}; the package would not be what was searched"
            )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _module_source(label: str, built: _Built, study_name: str) -> str:
    from nas_asc import __version__

    k = built.index
    devices = [d for d in built.networks if d != "general"]
    own = ", ".join(devices) if devices else "none"
    return f'''"""DCASE 2025 Task 1 inference module: submission {k} of {label}.

Generated by nas-asc {__version__} from study {study_name!r}, trial {built.trial.number}
({built.family}). Int8 networks: the general one and one per device for {own}; any other device
ID ("unknown" included) gets the general one. Implements the organizers' API
(CPJKU/dcase2025_task1_inference): load_model, load_inputs, get_model_for_device, predict.
The int8 kernels run on the CPU, so use_cuda is accepted and the networks stay on the CPU.
"""

from importlib import resources
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _runtime
from ._nets import net_{k}

CHECKPOINT = "{label}_{k}.pt"


def _default_checkpoint() -> str:
    return str(resources.files(__package__) / "ckpts" / CHECKPOINT)


def load_model(model_file_path: Optional[str] = None) -> torch.nn.Module:
    """The model: general and per-device int8 networks, front end, class order."""
    path = _default_checkpoint() if model_file_path is None else model_file_path
    return _runtime.load_model(path, net_{k}.NETWORKS)


def load_inputs(
    file_paths: List[str], device_ids: List[str], model: torch.nn.Module
) -> List[Tensor]:
    """One normalized log-mel input (1, 1, n_mels, frames) per file, in input order."""
    return _runtime.load_inputs(file_paths, device_ids, model)


def get_model_for_device(model: torch.nn.Module, device_id: str) -> torch.nn.Module:
    """The device's own network, or the general one for any other device ID."""
    return model.get_model_for_device(device_id)


def predict(
    file_paths: List[str],
    device_ids: List[str],
    model_file_path: Optional[str] = None,
    use_cuda: bool = True,
    batch_size: int = 64,
) -> Tuple[List[Tensor], List[str]]:
    """Logits (n_classes,) per file in input order, and the class order."""
    _runtime.check_arguments(file_paths, device_ids, batch_size)
    model = load_model(model_file_path)
    return _runtime.predict(file_paths, device_ids, model, batch_size=batch_size)
'''


def _net_source(built: _Built, label: str) -> tuple[str, dict[str, str]]:
    """Source of the submission's networks (one class per distinct graph) and each model's
    class name."""
    from nas_asc.deploy.netgen import network_source

    classes: dict[str, Any] = {}
    names: dict[str, str] = {}
    by_code: dict[str, str] = {}
    for name, net in built.networks.items():
        code = net.module.code
        if code not in by_code:
            by_code[code] = "Net" if not by_code else f"Net{len(by_code)}"
            classes[by_code[code]] = net
        names[name] = by_code[code]
    header = (
        f"Int8 networks of submission {built.index} of {label}, generated by nas-asc from "
        f"trial {built.trial.number} ({built.family}). Do not edit: the checkpoint's weights "
        "belong to exactly these layers."
    )
    source = network_source(classes, header)
    source += "\n\nNETWORKS = {" + ", ".join(f"{c!r}: {c}" for c in classes) + "}\n"
    return source, names


def _checkpoint(built: _Built, names: dict[str, str], study_name: str) -> dict:
    from nas_asc.data.tau22 import SCENES
    from nas_asc.deploy.runtime import FORMAT

    return {
        "format": FORMAT,
        "class_order": list(SCENES),
        "frontend": {**built.frontend.to_dict(), "mean": built.mean, "std": built.std},
        "architectures": names,
        "models": {name: net.state_dict() for name, net in built.networks.items()},
        "info": {"study": study_name, "trial": built.trial.number, "family": built.family},
    }


def _dummy_wav(path: Path) -> None:
    """One second of quiet noise at 44.1 kHz, 24-bit mono: the checker's ``dummy.wav``."""
    import soundfile

    noise = np.random.default_rng(0).standard_normal(44100).astype(np.float32) * 0.01
    soundfile.write(str(path), noise, 44100, subtype="PCM_24")


def _pyproject(label: str) -> str:
    from nas_asc import __version__

    return f'''[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{label}"
version = "1.0.0"
description = "DCASE 2025 Task 1 inference package (generated by nas-asc {__version__})"
requires-python = ">=3.10"
dependencies = ["torch>=2.4", "torchaudio>=2.4", "numpy>=1.24", "soundfile>=0.12"]

[tool.setuptools.packages.find]
include = ["{label}*"]

[tool.setuptools.package-data]
{label} = ["ckpts/*.pt", "resources/*.wav", "resources/*.csv"]
'''


def _readme(label: str, study, result_rows: list[dict], choice: list[str]) -> str:
    lines = [
        f"# {label}: DCASE 2025 Task 1 inference package",
        "",
        f"Generated by nas-asc from study `{study.study_name}`. Each module "
        f"`{label}.{label}_<k>` implements the organizers' inference API "
        "(`load_model`, `load_inputs`, `get_model_for_device`, `predict`; "
        "CPJKU/dcase2025_task1_inference). Every network is int8: its weights are `int8` "
        "parameters and its biases and float layers `float32` parameters, so the checker's "
        "byte count sees every stored value (per-channel scales and zero points are "
        "quantization parameters, kept as buffers). The int8 kernels are PyTorch's "
        "(`torch.ops.quantized`) and run on the CPU; `use_cuda` is accepted and ignored.",
        "",
        "```bash",
        "pip install -e .",
        "pip install torchinfo  # test_complexity.py counts MACs with it, as the checker does",
        f"python test_complexity.py --submission_name {label} --submission_index 1",
        "```",
        "",
        "`test_complexity.py` (in this folder) computes what the organizers' checker computes "
        "for every device ID: torchinfo's `total_mult_adds` of the device's model on the input "
        "`load_inputs` gives for `resources/dummy.wav`, and the bytes of its `parameters()`; it "
        "prints them against the limits (30,000,000 MACs, 128,000 bytes), writes "
        f"`predictions/{label}_<k>/complexity.json` and exits 1 if a device is over.",
        "",
        "`predict` takes the task's clips: one second of mono audio at 44.1 kHz. Another clip "
        "is cut or padded to one second, resampled or mixed down, and a warning says so; a "
        "missing, truncated or undecodable file is an error naming it. Device IDs match in "
        "any case (`S1` is `s1`); a device without its own model gets the general one.",
        "",
        "## Submissions",
        "",
        "| module | trial | model | own device models | max MACs | max param bytes | "
        "test accuracy (package) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result_rows:
        own = ", ".join(r["devices"]) or "none (general for all)"
        lines.append(
            f"| `{label}_{r['index']}` | {r['trial']} | {r['family']} | {own} | "
            f"{r['max_macs']:,} | {r['max_param_bytes']:,} | {r['accuracy']:.2%} |"
        )
    lines += ["", "## Why these trials", ""] + [f"- {c}" for c in choice]
    lines += [
        "",
        "## Checks nas-asc ran before writing this folder",
        "",
        "In a fresh interpreter in which nas-asc cannot be imported: every module imported, "
        "`load_model()`, `load_inputs` on `resources/dummy.wav` for the device IDs "
        f"{', '.join(DEVICE_IDS)}, `get_model_for_device`, torchinfo's `total_mult_adds` of a "
        "float copy and the bytes of `parameters()` by dtype (the figures are in "
        f"`predictions/{label}_<k>/complexity.json`), and `predict` on the test fold, which "
        f"gave nas-asc's int8 top-1 scene on at least {MIN_AGREEMENT:.0%} of the clips.",
        "",
    ]
    return "\n".join(lines)


def _write(workdir: Path, label: str, study, built: list[_Built]) -> None:
    from nas_asc._cache import torch_save

    pkg = workdir / label
    for folder in (pkg, pkg / "_nets", pkg / "ckpts", pkg / "resources"):
        folder.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(
        f'"""DCASE 2025 Task 1 inference package {label} (generated by nas-asc)."""\n'
    )
    (pkg / "_nets" / "__init__.py").write_text('"""Generated int8 networks."""\n')
    (pkg / "resources" / "__init__.py").write_text('"""dummy.wav and the test split."""\n')
    shutil.copyfile(Path(runtime.__file__), pkg / "_runtime.py")
    _dummy_wav(pkg / "resources" / "dummy.wav")
    for b in built:
        source, names = _net_source(b, label)
        (pkg / "_nets" / f"net_{b.index}.py").write_text(source)
        (pkg / f"{label}_{b.index}.py").write_text(_module_source(label, b, study.study_name))
        torch_save(_checkpoint(b, names, study.study_name), pkg / "ckpts" / f"{label}_{b.index}.pt")
        folder = workdir / "predictions" / f"{label}_{b.index}"
        folder.mkdir(parents=True, exist_ok=True)
        complexity = {
            "per_device": {d: dict(c) for d, c in b.per_device.items()},
            "max_MACs": max(c["MACs"] for c in b.per_device.values()),
            "max_Params": max(c["Params"] for c in b.per_device.values()),
        }
        (folder / "complexity.json").write_text(json.dumps(complexity, indent=2) + "\n")
    (workdir / "pyproject.toml").write_text(_pyproject(label))
    (workdir / "test_complexity.py").write_text(_TEST_COMPLEXITY)


def _test_split(path: Path, filenames: list[str], scenes: list[str]) -> None:
    lines = ["filename\tscene_label"] + [
        f"{f}\t{s}" for f, s in zip(filenames, scenes, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


#: The package's ``test_complexity.py``: the organizers' checker's figures for every device ID.
_TEST_COMPLEXITY = '''"""Complexity of a submission as the DCASE 2025 Task 1 checker counts it.

Written by nas-asc into the inference package. It follows the organizers' checker
(CPJKU/dcase2025_task1_inference: test_complexity.py, complexity.py): import
<name>.<name>_<index>, load_model(), load_inputs on resources/dummy.wav for every device ID,
get_model_for_device, torchinfo's total_mult_adds of a float copy of the device's model and the
bytes of its parameters() at their dtype. It prints one line per device, writes
predictions/<name>_<index>/complexity.json and exits 1 if a device is over the limits.

    pip install -e . && pip install torchinfo
    python test_complexity.py --submission_name <name> --submission_index 1
"""

import argparse
import copy
import importlib
import importlib.resources
import json
import os
import sys

MAX_MACS = 30_000_000
MAX_PARAMS_MEMORY = 128_000
DEVICE_IDS = ["a", "b", "c", *(f"s{i}" for i in range(1, 11)), "unknown"]


def macs_and_bytes(model, input_size):
    import torch
    import torchinfo

    size = {
        torch.float32: 4,
        torch.float16: 2,
        torch.bfloat16: 2,
        torch.int8: 1,
        torch.uint8: 1,
        torch.int32: 4,
        torch.qint8: 1,
        torch.quint8: 1,
    }
    profiled = copy.deepcopy(model).float()
    macs = torchinfo.summary(profiled, input_size=tuple(input_size), verbose=0).total_mult_adds
    total = 0
    for p in model.parameters():
        if p.dtype not in size:
            raise ValueError(f"a parameter has dtype {p.dtype}, which the checker does not count")
        total += p.numel() * size[p.dtype]
    return int(macs), int(total)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submission_name", required=True, help="e.g. Surname_INST_task1")
    parser.add_argument("--submission_index", type=int, required=True, help="1 to 4")
    args = parser.parse_args(argv)
    try:
        import torchinfo  # noqa: F401
    except ImportError:
        sys.exit("test_complexity.py counts MACs with torchinfo, as the checker does: "
                 "pip install torchinfo")
    name, index = args.submission_name, args.submission_index
    api = importlib.import_module(f"{name}.{name}_{index}")
    dummy = str(importlib.resources.files(f"{name}.resources") / "dummy.wav")
    model = api.load_model()
    inputs = api.load_inputs([dummy] * len(DEVICE_IDS), DEVICE_IDS, model)
    per_device, over = {}, []
    for tensor, device in zip(inputs, DEVICE_IDS):
        macs, nbytes = macs_and_bytes(api.get_model_for_device(model, device), tensor.shape)
        per_device[device] = {"MACs": macs, "Params": nbytes}
        ok = macs <= MAX_MACS and nbytes <= MAX_PARAMS_MEMORY
        if not ok:
            over.append(device)
        print(f"{device:>7} | MACs: {macs:>11,} | Params: {nbytes:>8,} bytes | "
              + ("ok" if ok else "OVER THE LIMIT"))
    figures = {
        "per_device": per_device,
        "max_MACs": max(c["MACs"] for c in per_device.values()),
        "max_Params": max(c["Params"] for c in per_device.values()),
    }
    folder = os.path.join("predictions", f"{name}_{index}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "complexity.json")
    with open(path, "w") as f:
        f.write(json.dumps(figures, indent=2) + "\\n")
    print(f"limits: {MAX_MACS:,} MACs, {MAX_PARAMS_MEMORY:,} bytes per device; wrote {path}")
    if over:
        print(f"over the limits: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


# --------------------------------------------------------------------------------------------
# The temporary folder a package is written in
# --------------------------------------------------------------------------------------------

#: In the folder an export writes its package in until it is checked; says whose it is.
_WORKDIR_MARK = ".nas-asc-export.json"
_WORKDIR_NAME = re.compile(r"\..+\.tmp-(\d+)-[A-Za-z0-9_]+")


def _make_workdir(out: Path) -> Path:
    """A new hidden folder next to ``out`` (``.<out>.tmp-<pid>-<random>``), marked with this
    process's id, host and start, so a later export can tell whether its writer died."""
    workdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    mark = {"tool": "nas-asc export", "pid": os.getpid(), "host": socket.gethostname()}
    (workdir / _WORKDIR_MARK).write_text(json.dumps({**mark, "created": time.time()}))
    return workdir


def _process_alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` may still be the one that made a folder at time ``since``
    (when in doubt: yes). A pid that a process started later reuses is not it (Linux)."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would not just probe
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return started <= since + 60  # a minute's slack for the clock


def remove_stale_workdirs(parent: Path) -> list[Path]:
    """Remove the folders that exports killed before they finished (``kill -9``, a crash) left
    in ``parent``, and return them. Only a folder named as :func:`_make_workdir` names them,
    holding its mark, made on this host by a process that no longer runs, is removed: another
    export's folder in progress, and anything not an export's, are left alone."""
    try:
        entries = sorted(Path(parent).iterdir())
    except OSError:
        return []
    host, removed = socket.gethostname(), []
    for entry in entries:
        match = _WORKDIR_NAME.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            mark = json.loads((entry / _WORKDIR_MARK).read_text())
            pid, created = int(mark["pid"]), float(mark["created"])
            ours = mark["tool"] == "nas-asc export" and mark["host"] == host
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not ours or pid != int(match.group(1)) or pid == os.getpid():
            continue
        if _process_alive(pid, created):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------------
# The check in a fresh interpreter
# --------------------------------------------------------------------------------------------


def _run_check(workdir: Path, label: str, indices: list[int], files, devices) -> dict:
    with tempfile.TemporaryDirectory(prefix="nas-asc-check-") as tmp:
        script = Path(tmp) / "check.py"
        shutil.copyfile(_HERE / "_check.py", script)
        request = {
            "label": label,
            "submissions": indices,
            "device_ids": list(DEVICE_IDS),
            "files": files,
            "file_devices": devices,
            "work": tmp,
            "result": str(Path(tmp) / "result.json"),
        }
        (Path(tmp) / "request.json").write_text(json.dumps(request))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(workdir.resolve())
        env["PYTHONNOUSERSITE"] = "1"
        proc = subprocess.run(
            [sys.executable, str(script), str(Path(tmp) / "request.json")],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        result_path = Path(tmp) / "result.json"
        if not result_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise NasAscError(f"the package check did not run ({tail[0]})")
        result = json.loads(result_path.read_text())
        if not result["ok"]:
            raise NasAscError(
                f"the package failed its check in a fresh interpreter: {result['error']}"
            )
        for entry in result["submissions"].values():
            entry["logits"] = np.load(entry["logits"])
        return result["submissions"]


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _check_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise NasAscError(
            f"output folder {out} already exists; the package is written to a new folder: "
            "choose another --out or remove it"
        )
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise NasAscError(f"{parent} is not a folder; choose --out inside a folder")
    return out


def export_dcase2025(
    study: optuna.Study,
    out: str | Path,
    label: str,
    trials: Sequence[int] | None = None,
    device_models: bool | None = None,
    data_root=None,
    tolerance_pp: float = 1.0,
    progress: bool = True,
) -> PackageResult:
    """Write and check a DCASE 2025 inference package for up to four trials of ``study``.

    Args:
        study: a study run by ``nas-asc search`` (with a validation protocol).
        out: the package's folder; it must not exist yet.
        label: the submission label, ``Surname_INST_task1``.
        trials: trial numbers (at most four); None chooses by hypervolume
            (:func:`choose_submissions`).
        device_models: True: every trial must have finished device models (``nas-asc
            finetune``); False: general models only; None: device models where a trial has them.
        data_root: the dataset root, if not the one the study recorded.
        tolerance_pp: largest gap between the package's test accuracy and the recorded one,
            in percentage points.
        progress: print the choice and one line per submission.

    Returns:
        A :class:`PackageResult`.

    Raises:
        NasAscError: bad input (before anything is written) or a failed check (nothing is left
            behind).
    """
    from nas_asc.data.features import load_features
    from nas_asc.data.tau22 import SCENES
    from nas_asc.search.artifacts import select_trials, study_artifact_store
    from nas_asc.search.holdout import load_study_data
    from nas_asc.study.record import require_budget

    say = reporter_for(progress).message
    label = check_label(label)
    out = _check_out(Path(out))
    if not (isinstance(tolerance_pp, int | float) and tolerance_pp > 0):
        raise NasAscError(f"--tolerance-pp must be a positive number, got {tolerance_pp!r}")
    if trials is not None and len(dict.fromkeys(trials)) > MAX_SUBMISSIONS:
        raise NasAscError(
            f"--trials names {len(dict.fromkeys(trials))} trials, but DCASE 2025 takes at most "
            f"{MAX_SUBMISSIONS} submissions per participant; name at most {MAX_SUBMISSIONS}"
        )
    budget = require_budget(study)
    if trials is None:
        numbers, choice = choose_submissions(study)
    else:
        numbers = [t.number for t in select_trials(study, list(trials), "export")]
        choice = [f"trials {', '.join(map(str, numbers))}, as named by --trials"]
    chosen = select_trials(study, numbers, "export")
    devices = {t.number: _device_models(t, device_models, study.study_name) for t in chosen}
    study_artifact_store(study)
    dataset, _, protocol = load_study_data(study, data_root, progress)
    if protocol is None:
        raise NasAscError(
            f"study {study.study_name!r} was searched before nas-asc had a validation split; "
            "search again with this version to export a submission"
        )
    for line in choice:
        say(line)
    unmeasured = [
        t for t in chosen if not devices[t.number] and "test_int8_accuracy" not in t.user_attrs
    ]
    if unmeasured:  # named off the front: its one test-fold measurement is taken now
        from nas_asc.search.holdout import measure_trials

        study = measure_trials(study, protocol, unmeasured, progress)
        chosen = select_trials(study, numbers, "export")
    view = protocol.test_view()
    cache: dict[Any, Any] = {}

    def features(frontend):
        if frontend not in cache:
            cache[frontend] = load_features(view, frontend, progress=progress)
        return cache[frontend]

    built = [
        _build(study, k, t, devices[t.number], features, progress)
        for k, t in enumerate(chosen, start=1)
    ]
    for b in built:
        _check_counts(b, budget, study.study_name)

    test = view.evaluate
    files = [str(dataset.path(name)) for name in test.filename]
    clip_devices = [str(d) for d in test.device]
    labels = test.label.to_numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_workdirs(out.parent)
    if removed:
        say(
            f"removed {len(removed)} folder(s) that killed exports left in {out.parent}: "
            + ", ".join(p.name for p in removed)
        )
    workdir = _make_workdir(out)
    try:
        _write(workdir, label, study, built)
        _test_split(
            workdir / label / "resources" / "test.csv",
            list(test.filename),
            list(test.scene_label),
        )
        say(
            f"checking the package in a fresh interpreter (without nas-asc): the checker's "
            f"count on {len(DEVICE_IDS)} device IDs, predict on {len(files):,} test clips"
        )
        checked = _run_check(workdir, label, [b.index for b in built], files, clip_devices)
        rows = []
        for b in built:
            entry = checked[str(b.index)]
            if entry["class_order"] != list(SCENES):
                raise NasAscError(
                    f"submission {b.index} returns class order {entry['class_order']}, not "
                    f"{list(SCENES)}"
                )
            for device, counted in entry["per_device"].items():
                mine = b.per_device[device]
                if (counted["MACs"], counted["Params"]) != (mine["MACs"], mine["Params"]):
                    raise NasAscError(
                        f"submission {b.index}, device {device}: the checker counts "
                        f"{counted['MACs']:,} MACs and {counted['Params']:,} bytes in a fresh "
                        f"interpreter, nas-asc {mine['MACs']:,} and {mine['Params']:,}"
                    )
            top1 = entry["logits"].argmax(1)
            agreement = float((top1 == b.expected).mean())
            accuracy = float((top1 == labels).mean())
            if agreement < MIN_AGREEMENT:
                raise NasAscError(
                    f"submission {b.index} (trial {b.trial.number}) predicts nas-asc's int8 scene "
                    f"on {agreement:.2%} of the test clips, below {MIN_AGREEMENT:.0%}"
                )
            gap = abs(accuracy - b.recorded_accuracy) * 100
            if gap > tolerance_pp:
                raise NasAscError(
                    f"submission {b.index} (trial {b.trial.number}): the package's test accuracy "
                    f"{accuracy:.2%} is {gap:.2f} points from {b.recorded_what} "
                    f"({b.recorded_accuracy:.2%}), over --tolerance-pp {tolerance_pp:g}"
                )
            rows.append(
                {
                    "index": b.index,
                    "trial": b.trial.number,
                    "family": b.family,
                    "devices": [d for d in b.networks if d != "general"],
                    "per_device": b.per_device,
                    "max_macs": max(c["MACs"] for c in b.per_device.values()),
                    "max_param_bytes": max(c["Params"] for c in b.per_device.values()),
                    "agreement": agreement,
                    "accuracy": accuracy,
                    "recorded_accuracy": b.recorded_accuracy,
                }
            )
        (workdir / "README.md").write_text(_readme(label, study, rows, choice))
        (workdir / _WORKDIR_MARK).unlink()
        os.replace(workdir, out)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return PackageResult(out, label, rows, choice)
