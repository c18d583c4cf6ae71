"""A DCASE 2025 inference package from a search, fine-tuned device models and the export, checked
by an independent script that follows the organizers' published API and checker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch

pytest.importorskip("torchinfo")

from nas_asc.budget import PRESETS  # noqa: E402
from nas_asc.cli import main  # noqa: E402
from nas_asc.errors import NasAscError  # noqa: E402
from nas_asc.export.dcase2025 import package as package_module  # noqa: E402
from nas_asc.export.dcase2025.package import DEVICE_IDS, export_dcase2025  # noqa: E402
from nas_asc.finetune import finetune_study  # noqa: E402
from nas_asc.search.artifacts import open_artifact_store  # noqa: E402
from nas_asc.search.holdout import measure_front  # noqa: E402
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective, SearchContext  # noqa: E402
from nas_asc.search.space import SearchSpace  # noqa: E402

LABEL = "Tester_NASASC_task1"
SPACE = {
    "name": "tiny",
    "model": "tfsepnet",
    "fixed": {
        "model": {"depths": [1, 1, 1, 1]},
        "frontend": {"n_mels": 32},
        "train": {"batch_size": 32, "lr": 0.02, "epochs": 1},
    },
    "dimensions": {"model.width": {"type": "int", "low": 8, "high": 12, "step": 4}},
}

# building and checking a package takes a search and a fresh interpreter: the slow suite (CI
# runs it), so that the default suite stays within 10 minutes
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tiny_search, tiny_protocol, tiny_root, tmp_path_factory):
    """Two trials searched under the dcase2025 budget; device models for trial 0 only."""
    budget = PRESETS["dcase2025"]
    artifact_dir = tmp_path_factory.mktemp("artifacts")
    context = SearchContext(
        SearchSpace.from_dict(SPACE),
        budget,
        tiny_search,
        torch.randn(tiny_search.n_meta_rows, 10),
        seed=3,
        progress=False,
        artifact_store=open_artifact_store(artifact_dir),
    )
    storage = f"sqlite:///{tmp_path_factory.mktemp('db') / 'study.db'}"
    study = optuna.create_study(study_name="tiny", storage=storage, directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr("artifact_dir", str(artifact_dir))
    study.set_user_attr("budget", budget.to_dict())
    study.set_user_attr("seed", 3)
    study.set_user_attr(
        "data_info",
        {
            "root": str(tiny_root),
            "train_split": "fold1",
            "fingerprint": tiny_protocol.dataset.fingerprint,
            "synthetic": True,
        },
    )
    study.set_user_attr("protocol", tiny_protocol.to_dict())
    study.enqueue_trial({"model.width": 8})
    study.enqueue_trial({"model.width": 12})
    study.optimize(Objective(context), n_trials=2)
    study = measure_front(study, tiny_protocol, progress=False)
    return finetune_study(study, [0], epochs=1, progress=False)


def _killed_export_folder(parent, name="pkg"):
    """The folder an export killed with ``kill -9`` leaves: named and marked by a process that
    no longer runs."""
    import socket
    import time

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = parent / f".{name}.tmp-{dead.pid}-k1lled_"
    (folder / LABEL).mkdir(parents=True)
    mark = {"tool": "nas-asc export", "pid": dead.pid, "host": socket.gethostname()}
    (folder / package_module._WORKDIR_MARK).write_text(json.dumps({**mark, "created": time.time()}))
    return folder


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("packages") / "pkg"
    stale = _killed_export_folder(out.parent, "other")
    result = export_dcase2025(study, out, LABEL, trials=[0, 1], progress=False)
    result.stale = stale
    return result


# The organizers' method, written from their README and checker (complexity.py,
# test_complexity.py), with nothing of nas-asc: import the module, load_model, load_inputs on
# resources/dummy.wav for every device, get_model_for_device, torchinfo's total_mult_adds on a
# float copy and parameter bytes by dtype, then predict on the test clips.
INDEPENDENT_CHECK = textwrap.dedent(
    """
    import copy, importlib, importlib.resources, json, sys
    sys.modules["nas_asc"] = None
    import torch, torchinfo
    label, index, request = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
    api = importlib.import_module(f"{label}.{label}_{index}")
    dummy = str(importlib.resources.files(f"{label}.resources") / "dummy.wav")
    model = api.load_model()
    devices = request["devices"]
    inputs = api.load_inputs([dummy] * len(devices), devices, model)
    size = {torch.float32: 4, torch.float16: 2, torch.int8: 1, torch.uint8: 1, torch.int32: 4}
    out = {"complexity": {}}
    for x, device in zip(inputs, devices):
        sub = api.get_model_for_device(model, device)
        macs = torchinfo.summary(copy.deepcopy(sub).float(), input_size=x.shape,
                                 verbose=0).total_mult_adds
        nbytes = sum(p.numel() * size[p.dtype] for p in sub.parameters())
        out["complexity"][device] = [int(macs), int(nbytes), id(sub)]
    logits, classes = api.predict(request["files"], request["file_devices"])
    out["top1"] = [int(torch.as_tensor(l).argmax()) for l in logits]
    out["classes"] = classes
    print(json.dumps(out))
    """
)


def _independent_check(package_dir, index, files, file_devices, tmp_path):
    request = tmp_path / f"request{index}.json"
    request.write_text(
        json.dumps({"devices": list(DEVICE_IDS), "files": files, "file_devices": file_devices})
    )
    script = tmp_path / "check.py"
    script.write_text(INDEPENDENT_CHECK)
    env = {**os.environ, "PYTHONPATH": str(package_dir)}
    done = subprocess.run(
        [sys.executable, str(script), LABEL, str(index), str(request)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_package_passes_an_independent_check_of_the_published_api(
    study, written, tiny_protocol, tmp_path
):
    from nas_asc.data.tau22 import SCENES

    view = tiny_protocol.test_view()
    files = [str(view.path(n)) for n in view.evaluate.filename]
    file_devices = [str(d) for d in view.evaluate.device]
    labels = list(view.evaluate.label)
    fresh = optuna.load_study(study_name="tiny", storage=_storage(study))  # export measured 1
    trials = {t.number: t for t in fresh.trials}
    for row in written.submissions:
        trial = trials[row["trial"]]
        got = _independent_check(written.directory, row["index"], files, file_devices, tmp_path)
        assert got["classes"] == list(SCENES)
        # within budget for every device, at exactly the figures the search recorded
        for device, (macs, nbytes, _) in got["complexity"].items():
            assert macs <= 30_000_000 and nbytes <= 128_000, device
            assert (macs, nbytes) == (trial.user_attrs["macs"], trial.user_attrs["param_bytes"])
        accuracy = sum(p == y for p, y in zip(got["top1"], labels, strict=True)) / len(labels)
        record = trial.user_attrs.get("device_models")
        if row["trial"] == 0:  # its device models are used where they were selected
            selected = sorted(d for d, r in record["devices"].items() if r["selected"])
            assert row["devices"] == selected
            assert accuracy == record["test"]["combined"]["accuracy"]
            own = {got["complexity"][d][2] for d in selected}
            general = got["complexity"]["unknown"][2]
            assert general not in own and len(own) == len(selected)
            assert got["complexity"]["s4"][2] == general
        else:
            assert record is None and row["devices"] == []
            assert accuracy == trial.user_attrs["test_int8_accuracy"]


def test_the_package_layout_and_its_complexity_files(written, study):
    root = written.directory
    for rel in (
        "pyproject.toml",
        "README.md",
        f"{LABEL}/__init__.py",
        f"{LABEL}/_runtime.py",
        f"{LABEL}/resources/dummy.wav",
        f"{LABEL}/resources/test.csv",
        f"{LABEL}/{LABEL}_1.py",
        f"{LABEL}/{LABEL}_2.py",
        f"{LABEL}/ckpts/{LABEL}_1.pt",
        "test_complexity.py",
    ):
        assert (root / rel).is_file(), rel
    assert not (root / package_module._WORKDIR_MARK).exists()
    for path in root.rglob("*.py"):
        assert "nas_asc" not in path.read_text(), path
    figures = json.loads((root / "predictions" / f"{LABEL}_2" / "complexity.json").read_text())
    assert sorted(figures) == ["max_MACs", "max_Params", "per_device"]
    assert set(figures["per_device"]) == set(DEVICE_IDS)
    trial = next(t for t in study.trials if t.number == 1)
    assert figures["max_MACs"] == trial.user_attrs["macs"]
    readme = (root / "README.md").read_text()
    assert "trials 0, 1, as named by --trials" in readme
    assert not list(root.parent.glob(".pkg.tmp-*"))
    assert not written.stale.exists()  # a killed export's folder: the next export removed it


def test_the_readme_command_prints_the_checkers_figures(written, tmp_path):
    """``python test_complexity.py ...`` as the README writes it, in a fresh interpreter
    without nas-asc: the figures of complexity.json, for every device ID."""
    import re
    import shlex

    readme = (written.directory / "README.md").read_text()
    (command,) = re.findall(r"^python test_complexity\.py .*$", readme, re.M)
    argv = shlex.split(command)
    script = tmp_path / "run.py"
    script.write_text(
        "import runpy, sys\n"
        "sys.modules['nas_asc'] = None\n"
        f"sys.argv = {[str(written.directory / argv[1]), *argv[2:]]!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(written.directory)}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rel = f"predictions/{LABEL}_1/complexity.json"
    got = json.loads((tmp_path / rel).read_text())
    assert got == json.loads((written.directory / rel).read_text())
    assert all(f"{d:>7} | MACs:" in done.stdout for d in DEVICE_IDS)


def _storage(study) -> str:
    return getattr(study._storage, "_backend", study._storage).url


def _cli(args, storage):
    return main(["export", "--study", "tiny", "--storage", storage, "--format", "dcase2025", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "NoInstitute_task1"], "is not a DCASE submission label"),
        (["--label", LABEL, "--trials", "0,1,2,3,4"], "at most 4 submissions"),
        (["--label", LABEL, "--trials", "1", "--device-models"], "has no device models"),
        (["--trials", "1"], "needs --label"),
        (["--label", LABEL, "--overwrite"], "does not apply to --format dcase2025"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(study, tmp_path, capsys, args, message):
    out = tmp_path / "pkg"
    code = _cli([*args, "--out", str(out)], _storage(study))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_folder_is_refused_untouched(study, tmp_path, capsys):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code = _cli(["--label", LABEL, "--out", str(out)], _storage(study))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "already exists" in err[0]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_package_that_fails_its_check_is_not_left_behind(study, tmp_path, monkeypatch):
    monkeypatch.setattr(package_module, "MIN_AGREEMENT", 1.01)
    out = tmp_path / "pkg"
    _killed_export_folder(tmp_path)
    with pytest.raises(NasAscError, match="predicts nas-asc's int8 scene"):
        export_dcase2025(study, out, LABEL, trials=[1], progress=False)
    assert list(tmp_path.iterdir()) == []  # nor a killed export's folder
