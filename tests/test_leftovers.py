"""What a failing command says and leaves behind (issue 34), through the CLI.

A damaged checkpoint, a database that refuses writes and a study nas-asc did not create are
each one line ``nas-asc: error: ...`` (exit 2) that names the file and the fix, and leave no
temporary folder, half report or unrecorded work behind; fine-tuning again with other settings
leaves no unreferenced device checkpoint in the artifact folder.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
from toydata import artifact_context, record_data

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.cli import main
from nas_asc.finetune import finetune_study
from nas_asc.search.holdout import measure_front, set_finished_trial_attrs
from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective

SEED = 5
SPACE = {
    "name": "tiny",
    "model": "tfsepnet",
    "fixed": {
        "model": {"width": 8, "depths": [1, 1, 1, 1]},
        "frontend": {"n_mels": 32},
        "train": {"batch_size": 32, "lr": 0.02, "epochs": 1},
    },
    "dimensions": {"model.dropout": {"type": "float", "low": 0.0, "high": 0.1}},
}
LABEL = "Doe_TEST_task1"


@pytest.fixture(scope="module")
def searched(tiny_search, tiny_protocol, tiny_root, tmp_path_factory) -> Path:
    """A folder with a one-trial study as ``nas-asc search`` leaves it: ``study.db``,
    ``artifacts/``, the teacher's logits in ``teacher.pt``."""
    folder = tmp_path_factory.mktemp("searched")
    torch.manual_seed(SEED)  # the context's random teacher logits
    context = artifact_context(tiny_search, SPACE, folder / "artifacts", seed=SEED)
    torch.save(context.teacher_logits, folder / "teacher.pt")
    study = optuna.create_study(
        study_name="tiny",
        storage=f"sqlite:///{folder / 'study.db'}",
        directions=list(DIRECTIONS),
        sampler=optuna.samplers.RandomSampler(seed=SEED),
    )
    study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr("budget", DEFAULT_BUDGET.to_dict())
    study.set_user_attr("seed", SEED)
    study.set_user_attr("artifact_dir", str(folder / "artifacts"))
    record_data(study, tiny_protocol, tiny_root)
    info = {**study.user_attrs["data_info"], "teacher_logits": str(folder / "teacher.pt")}
    study.set_user_attr("data_info", info)
    study.optimize(Objective(context), n_trials=1)
    measure_front(study, tiny_protocol, progress=False)
    return folder


@pytest.fixture(scope="module")
def tuned(searched, tmp_path_factory) -> Path:
    """The searched study's folder, copied, its trial fine-tuned per device for one epoch at
    0.5 x its learning rate."""
    folder = tmp_path_factory.mktemp("tuned") / "study"
    work = Work(searched, folder)
    finetune_study(work.study(), epochs=1, lr_scale=0.5, progress=False)
    return work.root


class Work:
    """A copy of the source study in ``tmp_path`` (database, artifacts, teacher), as its own."""

    def __init__(self, source: Path, tmp_path: Path) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.root = tmp_path / "study"
        shutil.copytree(source, self.root)
        self.db = self.root / "study.db"
        self.url = f"sqlite:///{self.db}"
        self.artifacts = self.root / "artifacts"
        self.tmp = tmp_path
        study = self.study()
        study.set_user_attr("artifact_dir", str(self.artifacts))
        info = {**study.user_attrs["data_info"], "teacher_logits": str(self.root / "teacher.pt")}
        study.set_user_attr("data_info", info)

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="tiny", storage=self.url)

    def trial(self) -> optuna.trial.FrozenTrial:
        (trial,) = self.study().trials
        return trial

    def checkpoint(self) -> Path:
        return self.artifacts / self.trial().user_attrs["checkpoint_artifact"]

    def device_checkpoint(self, device: str) -> Path:
        record = self.trial().user_attrs["device_models"]
        return self.artifacts / record["devices"][device]["checkpoint_artifact"]

    def files(self) -> set[str]:
        return {p.name for p in self.artifacts.iterdir()}

    def argv(self, command: str) -> list[str]:
        """The CLI arguments of ``command`` on this study (each reads the trial's checkpoint)."""
        common = ["--study", "tiny", "--storage", self.url]
        return {
            "evaluate": ["evaluate", *common, "--seeds", "1", "--reports", str(self.tmp / "r")],
            # other settings than the recorded ones: the trial is fine-tuned from its checkpoint
            "finetune": ["finetune", *common, "--epochs", "2", "--lr-scale", "0.5"],
            "export": ["export", *common, "--out", str(self.tmp / "exports")],
            "dcase2025": [
                *("export", *common, "--format", "dcase2025", "--label", LABEL),
                *("--out", str(self.tmp / "package")),
            ],
        }[command]


@pytest.fixture
def work(searched, tmp_path, monkeypatch) -> Work:
    """A copy of the searched study, the working folder its parent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    return Work(searched, tmp_path)


@pytest.fixture
def tuned_work(tuned, tmp_path, monkeypatch) -> Work:
    """A copy of the fine-tuned study, the working folder its parent."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    return Work(tuned, tmp_path)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of the CLI (quiet)."""
    capsys.readouterr()
    code = main(["-q", *argv])
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-asc: error: "), err
    assert "unexpected" not in err and "report it" not in err
    return lines[0]


def _leftovers(work: Work) -> list[str]:
    """Everything in the working folder besides the study's own folder."""
    return sorted(p.name for p in work.tmp.iterdir() if p.name != "study")


@contextlib.contextmanager
def _read_only():
    """Every SQLite connection opened meanwhile refuses writes as a read-only database file
    does (``attempt to write a readonly database``): the tests run as root too, which file
    modes do not stop, so SQLite's own switch stands in for them."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def query_only(dbapi_connection, record):
        dbapi_connection.execute("PRAGMA query_only = ON")

    event.listen(Engine, "connect", query_only)
    try:
        yield
    finally:
        event.remove(Engine, "connect", query_only)


def _no_training(monkeypatch) -> list:
    """Replace the retraining of ``evaluate`` by a spy that fails the test if it is called."""
    import nas_asc.search.objective as objective

    calls: list = []

    def spy(*args, **kwargs):
        calls.append(1)
        raise AssertionError("nothing may be trained")

    monkeypatch.setattr(objective, "train_candidate", spy)
    return calls


# --------------------------------------------------------------------------------------------
# Damaged checkpoints
# --------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # torch: "[Errno 22] Invalid argument", no name


DAMAGE = {
    "truncated": _truncate,
    "empty": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(b"not a checkpoint\n" * 64),
    "a-tensor": lambda path: torch.save(torch.zeros(3), path),
    "fields-missing": lambda path: torch.save({"format": "nas-asc-checkpoint/1"}, path),
}


@pytest.mark.parametrize("command", ["evaluate", "finetune", "export", "dcase2025"])
def test_a_truncated_checkpoint_is_one_line_naming_it_in_every_command(
    work, command, monkeypatch, capsys
):
    pytest.importorskip("onnxruntime")
    path = work.checkpoint()
    _truncate(path)
    files, record = work.files(), work.trial().user_attrs
    _no_training(monkeypatch)
    line = _one_line_error(*_run(work.argv(command), capsys))
    assert str(path) in line and "is corrupt or truncated" in line
    assert "restore the file from a backup, or leave trial 0 out" in line
    assert _leftovers(work) == []  # no export folder, no .tmp folder, no package, no report
    assert work.files() == files and work.trial().user_attrs == record  # nothing recorded


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_any_damaged_checkpoint_is_one_line_naming_it(work, damage, monkeypatch, capsys):
    path = work.checkpoint()
    DAMAGE[damage](path)
    _no_training(monkeypatch)
    line = _one_line_error(*_run(work.argv("evaluate"), capsys))
    assert str(path) in line and "checkpoint of trial 0" in line
    assert "restore the file from a backup" in line
    assert "evaluation_runs" not in work.trial().user_attrs


@pytest.mark.slow  # fine-tunes per device, then one device and the test fold again
def test_a_truncated_device_checkpoint_names_its_file_and_the_fix_that_works(tuned_work, capsys):
    work = tuned_work
    trial = work.trial()
    record = trial.user_attrs["device_models"]
    device = next(iter(record["devices"]))
    damaged = work.device_checkpoint(device)
    _truncate(damaged)
    # the test-fold figures unrecorded: fine-tuning again rebuilds every device model
    unmeasured = {k: v for k, v in record.items() if k != "test"}
    set_finished_trial_attrs(work.study(), trial._trial_id, {"device_models": unmeasured})
    files = work.files()
    argv = ["finetune", "--study", "tiny", "--storage", work.url, "--epochs", "1"]
    line = _one_line_error(*_run([*argv, "--lr-scale", "0.5"], capsys))
    assert str(damaged) in line and f"device {device!r} checkpoint of trial 0" in line
    assert "is corrupt or truncated" in line
    fix = re.search(r"delete the file if it is there and run nas-asc (finetune .*?) again", line)
    assert fix, line
    assert work.files() == files  # nothing uploaded

    damaged.unlink()  # the fix, as the line words it
    code, err = _run([*fix.group(1).split(), "--storage", work.url], capsys)
    assert code == 0, err
    after = work.trial().user_attrs["device_models"]
    assert "test" in after and after["epochs"] == 1 and after["lr_scale"] == 0.5
    replaced = after["devices"][device]["checkpoint_artifact"]
    assert replaced != record["devices"][device]["checkpoint_artifact"]
    others = {d: e["checkpoint_artifact"] for d, e in after["devices"].items() if d != device}
    assert others == {
        d: e["checkpoint_artifact"] for d, e in record["devices"].items() if d != device
    }
    assert work.files() == files - {damaged.name} | {replaced}


# --------------------------------------------------------------------------------------------
# A database that refuses writes
# --------------------------------------------------------------------------------------------


def test_a_read_only_database_stops_evaluate_before_training(work, monkeypatch, capsys):
    calls = _no_training(monkeypatch)
    with _read_only():
        line = _one_line_error(*_run(work.argv("evaluate"), capsys))
    assert f"cannot write to the study database {work.db}" in line
    assert "attempt to write a readonly database" in line and "make it writable" in line
    assert calls == [] and "evaluation_runs" not in work.trial().user_attrs
    assert _leftovers(work) == []


def test_a_read_only_database_stops_the_2025_export_before_measuring(work, capsys):
    pytest.importorskip("onnxruntime")
    with contextlib.closing(sqlite3.connect(work.db)) as db, db:  # the trial unmeasured
        db.execute("DELETE FROM trial_user_attributes WHERE key LIKE 'test_%'")
    with _read_only():
        code, err = _run([*work.argv("dcase2025"), "--no-device-models"], capsys)
    line = _one_line_error(code, err)
    assert f"cannot write to the study database {work.db}" in line
    assert "the test-fold measurement records its results there" in line
    assert _leftovers(work) == []
    assert "test_int8_accuracy" not in work.trial().user_attrs


@pytest.mark.slow  # retrains the trial once
def test_a_refused_record_after_training_keeps_the_run(work, monkeypatch, capsys):
    import nas_asc.search.holdout as holdout

    # the database turns read-only after the check (locked or full in the middle of a run)
    monkeypatch.setattr(holdout, "check_recordable", lambda study, command: None)
    with _read_only():
        line = _one_line_error(*_run(work.argv("evaluate"), capsys))
    assert f"the study database {work.db} refused to record the retraining with seed 1" in line
    kept = work.artifacts / "unrecorded" / "tiny-trial0-evaluation+evaluation_runs.json"
    assert f"they are kept in {kept}" in line and "run the same command again" in line
    runs = json.loads(kept.read_text())["attrs"]["evaluation_runs"]
    assert [r["index"] for r in runs] == [0]
    assert "evaluation_runs" not in work.trial().user_attrs
    assert not (work.tmp / "r").exists()

    monkeypatch.undo()
    monkeypatch.chdir(work.tmp)
    calls = _no_training(monkeypatch)  # the kept run is recorded, not trained again
    code, err = _run(work.argv("evaluate"), capsys)
    assert code == 0, err
    assert calls == [] and work.trial().user_attrs["evaluation_runs"] == runs
    assert not kept.exists() and not kept.parent.exists()


# --------------------------------------------------------------------------------------------
# A study nas-asc did not create
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directions", [["minimize"], ["maximize", "minimize"], list(DIRECTIONS)])
@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_a_foreign_study_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys, directions, command
):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="foreign", storage=url, directions=directions)
    study.optimize(lambda t: [t.suggest_float("x", 0, 1)] * len(directions), n_trials=3)
    line = _one_line_error(*_run([command, "--study", "foreign", "--storage", url], capsys))
    assert f"study 'foreign' in {url} was not created by nas-asc" in line
    assert "pass the --study of a nas-asc search" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db"]  # no reports/foreign


# --------------------------------------------------------------------------------------------
# Device checkpoints superseded by fine-tuning again
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # fine-tunes per device twice
def test_finetuning_with_other_settings_removes_the_superseded_device_checkpoints(
    tuned_work, capsys
):
    work = tuned_work
    trial = work.trial()
    before = {
        e["checkpoint_artifact"] for e in trial.user_attrs["device_models"]["devices"].values()
    }
    own = {trial.user_attrs["checkpoint_artifact"], trial.user_attrs["confusion_artifact"]}
    assert work.files() == own | before
    code, err = _run(work.argv("finetune"), capsys)  # --epochs 2: the trial starts over
    assert code == 0, err
    record = work.trial().user_attrs["device_models"]
    after = {e["checkpoint_artifact"] for e in record["devices"].values()}
    assert record["epochs"] == 2 and "test" in record and not after & before
    assert work.files() == own | after  # the superseded ones gone, the trial's own kept
