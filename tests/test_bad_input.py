"""Bad-input corpus (issue 7): every malformed input is refused by the real CLI in one line.

Each case runs ``nas_asc.cli.main`` in-process (the function the ``nas-asc`` script calls) in a
fresh working folder and checks the contract of the CLI: exactly one line on stderr, ``nas-asc:
error: ...``, naming the problem and the fix, a non-zero exit code, no traceback, and nothing left
behind: no study database, no report or artifact folder, the dataset and the cache untouched.
A few cases also run as real subprocesses (``python -m nas_asc.cli``, the ``nas-asc`` script) to
show that no traceback reaches a terminal. Data-level cases break a copy of the tiny dataset.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from nas_asc._cache import cache_root
from nas_asc.cli import main
from nas_asc.search.settings import (
    MAX_EVALUATE_SEEDS,
    THREADS_PER_CORE,
    WORKERS_PER_CORE,
    machine_cores,
    max_threads,
    max_workers,
)

UNREACHABLE_DB = "postgresql://nas@127.0.0.1:9/x"  # port 9 (discard): nothing listens there
_EMPTY_BUDGET = (
    "budget {spec} is empty; name a preset (cortex-m4, dcase2023, dcase2024, dcase2025) or "
    "limits such as bytes=128k,macs=30M, or leave out --budget for dcase2024"
)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file below ``root``, but for the index of audio
    file digests (facts about files on disk that loading a dataset records, not results)."""
    from nas_asc._cache import DIGESTS

    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != DIGESTS
    }


def _to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI in-process; argparse errors exit through SystemExit, the rest return.

    Warnings are shown on stderr under Python's default filters, as a terminal would show them
    (pytest would otherwise collect them out of sight).
    """
    with warnings.catch_warnings():
        # garbage of earlier tests (their database connections) is collected now, so that its
        # ResourceWarnings are not taken for this command's output
        warnings.simplefilter("ignore")
        gc.collect()
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
            warnings.simplefilter("ignore", category)
        warnings.showwarning = _to_stderr
        try:
            code = main(["-q", *argv])
        except SystemExit as exc:
            code = exc.code
    return code, capsys.readouterr().err


def _assert_one_line_error(code, err: str, fragments: tuple[str, ...]) -> str:
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("nas-asc: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def _assert_nothing_left(work: Path, files_before: set[str]) -> None:
    files = set(_snapshot(work))
    assert not [f for f in files - files_before if f.endswith(".db")], "a study was created"
    assert files == files_before, f"files were written: {sorted(files - files_before)}"
    assert not (work / "reports").exists(), "a reports folder was created"
    assert not list(work.rglob("artifacts")), "an artifact folder was created"
    assert not (work / "studies" / "s").exists(), "a study folder was created"


# --- space files ---------------------------------------------------------------------------


def _write(name: str, text: str) -> Callable[[Path, Path], None]:
    def setup(work: Path, data: Path) -> None:
        (work / name).write_text(text)

    return setup


def _space(dims: str, model: str = "tfsepnet") -> str:
    return f"name: bad\nmodel: {model}\ndimensions:\n  {dims}\n"


# --- dataset breakers (work on the copy in `data`) -----------------------------------------


def _first_clip(data: Path) -> Path:
    # features are computed in sorted order, so the first clip fails before any other work
    return sorted((data / "audio").iterdir())[0]


def _drop_meta(work: Path, data: Path) -> None:
    (data / "meta.csv").unlink()


def _drop_meta_columns(work: Path, data: Path) -> None:
    meta = data / "meta.csv"
    rows = [line.split("\t")[:2] for line in meta.read_text().splitlines()]
    meta.write_text("".join("\t".join(r) + "\n" for r in rows))


def _comma_meta(work: Path, data: Path) -> None:
    meta = data / "meta.csv"
    meta.write_text(meta.read_text().replace("\t", ","))


def _delete_audio(work: Path, data: Path) -> None:
    _first_clip(data).unlink()


def _fold_names_unknown_clip(work: Path, data: Path) -> None:
    fold = data / "evaluation_setup" / "fold1_train.csv"
    with fold.open("a") as fh:
        fh.write("audio/airport-lisbon-99-99-0-a.wav\tairport\n")


def _meta_names(outside: str) -> Callable[[Path, Path], None]:
    """meta.csv's first clip renamed to ``outside`` (a path that leaves the dataset root)."""

    def setup(work: Path, data: Path) -> None:
        meta = data / "meta.csv"
        header, first, *rows = meta.read_text().splitlines()
        first = "\t".join([outside, *first.split("\t")[1:]])
        meta.write_text("\n".join([header, first, *rows]) + "\n")

    return setup


def _clip_in_both_lists(work: Path, data: Path) -> None:
    setup = data / "evaluation_setup"
    first_train = (setup / "fold1_train.csv").read_text().splitlines()[1]
    with (setup / "fold1_evaluate.csv").open("a") as fh:
        fh.write(first_train + "\n")


def _corrupt_wav(work: Path, data: Path) -> None:
    path = _first_clip(data)
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)


def _truncate_wav(work: Path, data: Path) -> None:
    path = _first_clip(data)
    path.write_bytes(b"")


def _wav_without_samples(work: Path, data: Path) -> None:
    soundfile.write(str(_first_clip(data)), np.zeros(0, np.float32), 44100, subtype="PCM_24")


def _wav_with_nan(work: Path, data: Path) -> None:
    samples = np.zeros(44100, np.float32)
    samples[100:110] = np.nan  # a float WAV can hold NaN samples
    soundfile.write(str(_first_clip(data)), samples, 44100, subtype="FLOAT")


def _file_named(name: str) -> Callable[[Path, Path], None]:
    def setup(work: Path, data: Path) -> None:
        (work / name).write_text("a regular file, not a folder\n")

    return setup


def _space_folder(work: Path, data: Path) -> None:
    (work / "space.yaml").mkdir()


def _nonempty_folder(work: Path, data: Path) -> None:
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("mine")


def _create_study(path: Path, name: str) -> None:
    import optuna

    from nas_asc.search.study import open_study

    path.parent.mkdir()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line on stderr
    try:
        open_study(name, f"sqlite:///{path}", create=True)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _other_study(work: Path, data: Path) -> None:
    _create_study(work / "db" / "other.db", "other")


def _nas_asc_study(work: Path, data: Path) -> None:
    _create_study(work / "db" / "s.db", "s")


def _started_study(**attrs) -> Callable[[Path, Path], None]:
    """A study ``s`` in the default storage, started with space cnn, seed 0 and ``attrs``."""

    def setup(work: Path, data: Path) -> None:
        from nas_asc.budget import DEFAULT_BUDGET
        from nas_asc.search.study import open_study

        _create_study(work / "studies" / "s.db", "s")
        study = open_study("s", f"sqlite:///{work / 'studies' / 's.db'}")
        record = {"budget": DEFAULT_BUDGET.to_dict(), "seed": 0, "space": "cnn", **attrs}
        for key, value in record.items():
            study.set_user_attr(key, value)

    return setup


def _validation_file(pick: Callable[[Path], list[str]]) -> Callable[[Path, Path], None]:
    """Write ``work/val.csv``, a fold file (filename, scene_label) of the rows ``pick`` returns
    from the dataset copy."""

    def setup(work: Path, data: Path) -> None:
        rows = pick(data)
        (work / "val.csv").write_text("filename\tscene_label\n" + "".join(r + "\n" for r in rows))

    return setup


def _fold_rows(data: Path, fold: str) -> list[str]:
    return (data / "evaluation_setup" / f"{fold}.csv").read_text().splitlines()[1:]


def _one_location_for_airport(work: Path, data: Path) -> None:
    """Keep one training location of the scene airport (the tiny set has two)."""
    fold = data / "evaluation_setup" / "fold1_train.csv"
    header, *rows = fold.read_text().splitlines()
    kept = [r for r in rows if not r.startswith("audio/airport-paris-")]
    fold.write_text("\n".join([header, *kept]) + "\n")


def _logits(shape_of, suffix: str = ".pt", fill: float = 0.0) -> Callable[[Path, Path], None]:
    """Write ``work/logits<suffix>`` of shape ``shape_of(rows of meta.csv)``."""

    def setup(work: Path, data: Path) -> None:
        rows = len((data / "meta.csv").read_text().splitlines()) - 1
        logits = torch.full(shape_of(rows), fill)
        if suffix == ".npy":
            np.save(work / "logits.npy", logits.numpy())
        else:
            torch.save(logits, work / f"logits{suffix}")

    return setup


def _npy_header_only(shape: tuple[int, ...]) -> Callable[[Path, Path], None]:
    """Write ``work/logits.npy``: a valid header declaring ``shape`` (float32), no data."""

    def setup(work: Path, data: Path) -> None:
        with open(work / "logits.npy", "wb") as fh:
            header = {"descr": "<f4", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(fh, header)

    return setup


def _pickled_logits(work: Path, data: Path) -> None:
    """Write ``work/logits.pt`` with plain pickle (not torch.save): torch warns, then refuses."""
    import pickle

    rows = len((data / "meta.csv").read_text().splitlines()) - 1
    with open(work / "logits.pt", "wb") as fh:
        pickle.dump(torch.zeros(rows, 10), fh, protocol=4)


DATA = "{data}"  # replaced by the path of the broken dataset copy
SEARCH = ["search", "--space", "cnn", "--study", "s", "--data", DATA]

# (id, setup or None, argv, fragments the one line must contain)
CASES = [
    # search spaces
    (
        "malformed-yaml",
        _write("bad.yaml", "name: bad\nmodel: tfsepnet\ndimensions: {model.width: [1, 2\n"),
        ["search", "--space", "bad.yaml", "--data", DATA],
        ("bad.yaml", "not valid YAML", "fix the YAML syntax"),
    ),
    (
        "unknown-space",
        None,
        ["search", "--space", "no_such_space", "--data", DATA],
        ("no search space named 'no_such_space'", "tfsepnet"),
    ),
    (
        "space-file-missing",
        None,
        ["search", "--space", "missing.yaml", "--data", DATA],
        ("missing.yaml", "not found", "check the path"),
    ),
    (
        "space-file-is-a-folder",
        _space_folder,
        ["search", "--space", "space.yaml", "--data", DATA],
        ("is a folder, not a YAML file",),
    ),
    (
        "unknown-family",
        _write("fam.yaml", _space("model.width: {type: int, low: 8, high: 16}", model="nope")),
        ["search", "--space", "fam.yaml", "--data", DATA],
        ("unknown model family 'nope'", "use one of", "tfsepnet"),
    ),
    (
        "low-above-high",
        _write("lh.yaml", _space("model.width: {type: int, low: 40, high: 8}")),
        ["search", "--space", "lh.yaml", "--data", DATA],
        ("low 40 > high 8", "swap them"),
    ),
    (
        "categorical-without-choices",
        _write("cat.yaml", _space("model.width: {type: categorical, choices: []}")),
        ["search", "--space", "cat.yaml", "--data", DATA],
        ("choices is empty", "list at least one value"),
    ),
    (
        # values the trainer refuses in every trial: refused when the space loads
        "fixed-batch-size-1",
        _write(
            "bs.yaml",
            _space("model.width: {type: int, low: 8, high: 16}")
            + "fixed: {train: {batch_size: 1}}\n",
        ),
        ["search", "--space", "bs.yaml", "--data", DATA],
        ("fixed train", "batch_size must be an integer >= 2, got batch_size=1"),
    ),
    (
        "fixed-negative-lr",
        _write(
            "lr.yaml",
            _space("train.epochs: {type: int, low: 1, high: 2}") + "fixed: {train: {lr: -1}}\n",
        ),
        ["search", "--space", "lr.yaml", "--data", DATA],
        ("fixed train", "lr must be > 0", "change the value in fixed.train"),
    ),
    (
        "unknown-field",
        _write("field.yaml", _space("model.depth: {type: int, low: 1, high: 3}")),
        ["search", "--space", "field.yaml", "--data", DATA],
        ("depth",),
    ),
    # budgets and flags
    ("zero-budget", None, [*SEARCH, "--budget", "bytes=0"], ("bytes='0'", "above zero")),
    ("negative-budget", None, [*SEARCH, "--budget", "macs=-5"], ("macs='-5'", "above zero")),
    (
        "budget-not-a-number",
        None,
        [*SEARCH, "--budget", "macs=lots"],
        ("macs='lots' is not a number", "macs=30M"),
    ),
    (
        "unknown-budget-preset",
        None,
        [*SEARCH, "--budget", "huge"],
        ("unknown budget preset 'huge'", "dcase2024"),
    ),
    ("zero-trials", None, [*SEARCH, "--trials", "0"], ("--trials", "positive integer")),
    ("trials-not-a-number", None, [*SEARCH, "--trials", "ten"], ("--trials", "'ten'")),
    ("zero-epochs", None, [*SEARCH, "--epochs", "0"], ("--epochs", "positive integer")),
    ("negative-timeout", None, [*SEARCH, "--timeout", "-1"], ("--timeout", "positive number")),
    (
        "unknown-train-split",  # refused before the synthetic dataset would be generated
        None,
        ["search", "--space", "cnn", "--train-split", "split7"],
        ("unknown --train-split 'split7'", "split100"),
    ),
    (
        "parallel-workers-on-sqlite",
        None,
        [*SEARCH, "--workers", "2"],
        ("need a database server", "postgresql://"),
    ),
    # datasets
    (
        "dataset-root-missing",
        None,
        ["search", "--space", "cnn", "--data", "nowhere"],
        ("nowhere does not exist", "meta.csv"),
    ),
    (
        "dataset-root-is-a-file",
        _file_named("afile"),
        ["search", "--space", "cnn", "--data", "afile"],
        ("afile is not a directory",),
    ),
    ("no-meta-csv", _drop_meta, SEARCH, ("meta.csv not found", "TAU22 root folder")),
    (
        "meta-csv-missing-columns",
        _drop_meta_columns,
        SEARCH,
        ("lacks column(s) identifier, source_label", "required columns"),
    ),
    ("meta-csv-not-tab-separated", _comma_meta, SEARCH, ("not TAB-separated",)),
    (
        "fold-names-absent-audio",
        _delete_audio,
        SEARCH,
        ("missing on disk", "airport-lisbon", "download/extract the audio"),
    ),
    (
        "fold-names-clip-absent-from-meta",
        _fold_names_unknown_clip,
        SEARCH,
        ("absent from meta.csv", "airport-lisbon-99-99-0-a.wav"),
    ),
    (
        "meta-path-climbs-out-of-the-root",
        _meta_names("../../outside.wav"),
        SEARCH,
        ("names '../../outside.wav' outside the dataset root", "relative paths below it"),
    ),
    (
        "meta-path-is-absolute",
        _meta_names("/etc/passwd"),
        SEARCH,
        ("names '/etc/passwd' outside the dataset root",),
    ),
    (
        "clip-in-train-and-evaluate-lists",
        _clip_in_both_lists,
        SEARCH,
        ("is in both fold1_train.csv and fold1_evaluate.csv", "held out of training"),
    ),
    ("corrupt-wav", _corrupt_wav, SEARCH, ("cannot be decoded", "re-download or regenerate")),
    ("empty-wav-0-bytes", _truncate_wav, SEARCH, ("is empty (0 bytes)", "re-download")),
    ("wav-without-samples", _wav_without_samples, SEARCH, ("holds no samples", "re-download")),
    ("wav-with-nan", _wav_with_nan, SEARCH, ("holds 10 non-finite samples", "re-download")),
    # outputs
    (
        "reports-folder-below-a-file",
        _file_named("afile"),
        [*SEARCH, "--reports", "afile/reports"],
        ("cannot create reports folder afile/reports", "afile is a file", "--reports"),
    ),
    (
        "artifacts-folder-below-a-file",
        _file_named("afile"),
        [*SEARCH, "--artifacts", "afile/artifacts"],
        ("cannot create artifacts folder", "afile is a file", "--artifacts"),
    ),
    (
        "sqlite-storage-below-a-file",
        _file_named("afile"),
        [*SEARCH, "--storage", "sqlite:///afile/s.db"],
        ("afile is a file", "--storage"),
    ),
    (
        "unreachable-storage",
        None,
        [*SEARCH, "--storage", UNREACHABLE_DB],
        ("cannot open study storage postgresql://nas@127.0.0.1:9/x", "server is running"),
    ),
    (
        "storage-password-not-printed",
        None,
        [*SEARCH, "--storage", "postgresql://nas:s3cret@127.0.0.1:9/x"],
        ("postgresql://nas:***@127.0.0.1:9/x",),
    ),
    (
        "storage-driver-missing-or-server-down",  # no MySQL driver is installed here
        None,
        [*SEARCH, "--storage", "mysql://nas@127.0.0.1:9/x"],
        ("cannot open study storage mysql://nas@127.0.0.1:9/x",),
    ),
    (
        "unknown-storage-scheme",
        None,
        [*SEARCH, "--storage", "nosuchdb://x"],
        ("cannot open study storage nosuchdb://x", "check the URL"),
    ),
    (
        "synth-out-below-a-file",
        _file_named("afile"),
        ["data", "synth", "--out", "afile/synth"],
        ("cannot create output folder afile/synth", "afile is a file", "--out"),
    ),
    (
        "synth-out-not-empty",
        _nonempty_folder,
        ["data", "synth", "--out", "out"],
        ("is not empty", "new or empty folder"),
    ),
    # studies
    (
        "report-unknown-study",
        None,
        ["report", "--study", "nope"],
        ("no study database studies/nope.db", "nas-asc search --study nope"),
    ),
    (
        "report-unknown-study-in-storage",
        _other_study,
        ["report", "--study", "nope", "--storage", "sqlite:///db/other.db"],
        ("no study named 'nope'", "existing studies: other"),
    ),
    (
        "report-storage-file-missing",
        None,
        ["report", "--study", "nope", "--storage", "sqlite:///nope.db"],
        ("no study database nope.db", "check --storage"),
    ),
    (
        "export-unknown-study",
        None,
        ["export", "--study", "nope", "--out", "exports"],
        ("no study database studies/nope.db", "nas-asc search --study nope"),
    ),
    (
        "evaluate-unknown-study",
        None,
        ["evaluate", "--study", "nope"],
        ("no study database studies/nope.db", "nas-asc search --study nope"),
    ),
    (
        "evaluate-absent-trial",
        _nas_asc_study,
        ["evaluate", "--study", "s", "--storage", "sqlite:///db/s.db", "--trials", "7"],
        ("has no trial 7 (trials: none)", "evaluate the Pareto set"),
    ),
    ("evaluate-zero-seeds", None, ["evaluate", "--study", "s", "--seeds", "0"], ("--seeds",)),
    (
        "export-absent-trial",
        _nas_asc_study,
        ["export", "--study", "s", "--storage", "sqlite:///db/s.db", "--out", "x", "--trials", "7"],
        ("has no trial 7", "pick trial numbers from the report"),
    ),
    (
        "export-trials-not-numbers",
        None,
        ["export", "--study", "s", "--out", "x", "--trials", "a,b"],
        ("trial numbers like 3,5,8",),
    ),
    # teacher logits distributed as a file
    (
        "teacher-logits-wrong-shape",
        _logits(lambda n: (n, 9)),
        [*SEARCH, "--teacher-logits", "logits.pt"],
        ("must have shape (rows of meta.csv, classes)", ", 10), got (", ", 9)"),
    ),
    (
        "teacher-logits-transposed-npy",
        _logits(lambda n: (10, n), suffix=".npy"),
        ["teacher", "--data", DATA, "--logits", "logits.npy"],
        ("must have shape (rows of meta.csv, classes)", "got (10, "),
    ),
    (
        "teacher-logits-not-finite",
        _logits(lambda n: (n, 10), fill=float("nan")),
        [*SEARCH, "--teacher-logits", "logits.pt"],
        ("not finite on", "training clips", "every clip of the training split"),
    ),
    (
        "teacher-logits-missing-file",
        None,
        [*SEARCH, "--teacher-logits", "nope.pt"],
        ("teacher logits file nope.pt does not exist",),
    ),
    (
        # 100 M x 10 float32 = 4 GB declared by a 128-byte file: refused from the header alone
        "teacher-logits-npy-header-declares-gigabytes",
        _npy_header_only((100_000_000, 10)),
        [*SEARCH, "--teacher-logits", "logits.npy"],
        ("cannot read teacher logits file logits.npy",),
    ),
    (
        "teacher-logits-pickled-not-torch-saved",
        _pickled_logits,
        [*SEARCH, "--teacher-logits", "logits.pt"],
        ("cannot read teacher logits file logits.pt", "UnpicklingError"),
    ),
    (
        "teacher-logits-not-a-tensor-file",
        _write("logits.pt", "these are not logits\n"),
        [*SEARCH, "--teacher-logits", "logits.pt"],
        ("cannot read teacher logits file logits.pt", "torch.save"),
    ),
    # continuing a study differently: refused before the teacher trains
    (
        "continue-study-with-another-seed",
        _started_study(),
        [*SEARCH, "--seed", "1"],
        ("study 's' was started with --seed 0", "continue it with --seed 0"),
    ),
    (
        "continue-study-with-another-space",
        _started_study(),
        ["search", "--space", "bsconv", "--study", "s", "--data", DATA],
        ("was started with space 'cnn'", "same --space"),
    ),
    (
        "continue-study-on-another-dataset",
        _started_study(data="another", data_info={"fingerprint": "0" * 16}),
        SEARCH,
        ("was run on another dataset (another)", "same --data"),
    ),
    (
        "continue-study-of-the-old-protocol",
        _started_study(),
        SEARCH,
        ("was run before nas-asc searched on a validation split", "new --study name"),
    ),
    (
        "continue-study-with-another-validation-split",
        _started_study(
            protocol={
                "train_split": "fold1",
                "validation": "locations",
                "validation_fraction": 0.3,
                "validation_seed": 0,
                "validation_split": "0" * 16,
            }
        ),
        SEARCH,
        ("with --validation 0.3 (seed 0), another validation split", "--validation 0.3"),
    ),
    # the validation split
    ("validation-zero", None, [*SEARCH, "--validation", "0"], ("fraction in (0, 1)", "'0'")),
    ("validation-one", None, [*SEARCH, "--validation", "1"], ("fraction in (0, 1)", "'1'")),
    ("validation-nan", None, [*SEARCH, "--validation", "nan"], ("fraction in (0, 1)", "'nan'")),
    (
        "validation-and-validation-split",
        _validation_file(lambda data: _fold_rows(data, "fold1_train")[:3]),
        [*SEARCH, "--validation", "0.2", "--validation-split", "val.csv"],
        ("not allowed with argument", "--validation"),
    ),
    (
        "validation-split-missing",
        None,
        [*SEARCH, "--validation-split", "nope.csv"],
        ("--validation-split nope.csv is not a file", "filename column"),
    ),
    (
        "validation-split-names-test-clips",
        _validation_file(lambda data: _fold_rows(data, "fold1_evaluate")[:2]),
        [*SEARCH, "--validation-split", "val.csv"],
        ("names 2 clip(s) of the test fold (fold1_evaluate)", "validate on clips of"),
    ),
    (
        "validation-split-names-clips-outside-training",
        _validation_file(lambda data: ["audio/airport-lisbon-99-99-0-a.wav\tairport"]),
        [*SEARCH, "--validation-split", "val.csv"],
        ("names 1 clip(s) outside training split fold1", "airport-lisbon-99-99-0-a.wav"),
    ),
    (
        "validation-split-takes-a-whole-scene",
        _validation_file(lambda data: [r for r in _fold_rows(data, "fold1_train") if "\tbus" in r]),
        [*SEARCH, "--validation-split", "val.csv"],
        ("leaves scene 'bus' without clips on the training side", "both sides"),
    ),
    (
        "validation-split-too-small-for-a-scene",
        _one_location_for_airport,
        SEARCH,
        ("scene 'airport' has 1 recording location in training split fold1", "at least 2"),
    ),
    ("negative-seed", None, [*SEARCH, "--seed", "-1"], ("--seed must be an integer >= 0", "-1")),
    # search settings checked before any work
    (
        "unknown-pruner",
        None,
        [*SEARCH, "--pruner", "hyperband"],
        ("unknown pruner 'hyperband'", "dominance"),
    ),
    (
        "pruner-unknown-setting",
        None,
        [*SEARCH, "--pruner", "dominance:eta=2"],
        ("expected KEY=VALUE with KEY one of reduction_factor, min_peers, min_epochs",),
    ),
    (
        "pruner-setting-out-of-range",
        None,
        [*SEARCH, "--pruner", "dominance:reduction_factor=1"],
        ("reduction_factor must be > 1, got 1.0",),
    ),
    (
        "ir-dir-missing",
        None,
        [*SEARCH, "--ir-dir", "no_irs"],
        ("impulse-response folder no_irs does not exist", "--ir-dir"),
    ),
    (
        "ir-dir-without-wavs",
        _nonempty_folder,
        [*SEARCH, "--ir-dir", "out"],
        ("impulse-response folder out holds no .wav files",),
    ),
    (
        "ray-address-without-ray-backend",
        None,
        [*SEARCH, "--ray-address", "127.0.0.1:6379"],
        ("search backend 'optuna' does not take address", "choose another --backend"),
    ),
    ("dashboard-bad-port", None, ["dashboard", "--study", "s", "--port", "70000"], ("1..65535",)),
    (
        "complexity-unknown-model",
        None,
        ["complexity", "nope"],
        ("unknown model 'nope'", "known models", "tfsepnet"),
    ),
    (
        "complexity-bad-set",
        None,
        ["complexity", "tfsepnet", "--set", "width"],
        ("--set takes KEY=VALUE", "--set width=40"),
    ),
    # issue 15: inputs that used to end in "unexpected ... report it" (exit 1) or write files
    # outside the working folder
    (
        "infinite-budget",
        None,
        [*SEARCH, "--budget", "macs=1e999"],
        ("budget macs='1e999' is too large", "macs=30M"),
    ),
    (
        "complexity-infinite-budget",
        None,
        ["complexity", "tfsepnet", "--budget", "bytes=1e999"],
        ("budget bytes='1e999' is too large",),
    ),
    (
        "complexity-input-too-small",
        None,
        ["complexity", "tfsepnet", "--input", "1x1x1"],
        ("tfsepnet cannot run on --input 1x1x1", "Output size is too small", "1x128x44"),
    ),
    (
        "yaml-alias-bomb",  # 394 bytes that expand to 10**9 strings
        _write(
            "bomb.yaml",
            "name: bomb\nmodel: tfsepnet\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
            + "dimensions: {}\n",
        ),
        ["search", "--space", "bomb.yaml", "--data", DATA],
        ("bomb.yaml", "aliases expand to more than 100,000 values", "write the values out"),
    ),
    (
        "space-name-escapes",
        _write(
            "esc.yaml",
            _space("model.width: {type: int, low: 8, high: 16}").replace(
                "name: bad", "name: ../../escaped"
            ),
        ),
        ["search", "--space", "esc.yaml", "--data", DATA],
        ("study name '../../escaped' (from the space's name in esc.yaml)", "--study NAME"),
    ),
    (
        "study-name-absolute",
        None,
        ["search", "--space", "cnn", "--study", "/tmp/elsewhere", "--data", DATA],
        ("study name '/tmp/elsewhere' (from --study) is not a plain name",),
    ),
    (
        "report-study-name-with-folder",
        None,
        ["report", "--study", "a/../../b"],
        ("study name 'a/../../b' (from --study)",),
    ),
    # issue 34: inputs that were taken as something else, or that the machine cannot hold
    ("budget-empty", None, [*SEARCH, "--budget", ""], (_EMPTY_BUDGET.format(spec="''"),)),
    ("budget-only-a-comma", None, [*SEARCH, "--budget", ","], (_EMPTY_BUDGET.format(spec="','"),)),
    (
        "budget-key-twice",
        None,
        [*SEARCH, "--budget", "bytes=64k,bytes=32k"],
        ("budget 'bytes=64k,bytes=32k': bytes is given twice; give each limit once",),
    ),
    (
        "budget-dtype-twice",
        None,
        [*SEARCH, "--budget", "dtype=int8,dtype=float32"],
        ("budget 'dtype=int8,dtype=float32': dtype is given twice; give each limit once",),
    ),
    (
        "complexity-budget-ram-twice",
        None,
        ["complexity", "tfsepnet", "--budget", "ram=64Ki,ram=1"],
        ("budget 'ram=64Ki,ram=1': ram is given twice; give each limit once",),
    ),
    (
        "budget-limit-under-two-names",
        None,
        [*SEARCH, "--budget", "bytes=64k,param_bytes=32k"],
        ("bytes and param_bytes set the same limit; give each limit once",),
    ),
    (
        "budget-nan",
        None,
        [*SEARCH, "--budget", "macs=nan"],
        ("budget macs='nan' is not a number", "macs=30M"),
    ),
    (
        "pruner-setting-overflows-to-infinity",
        None,
        [*SEARCH, "--pruner", "dominance:reduction_factor=1e400"],
        ("pruner reduction_factor must be a finite number > 1, got inf", "reduction_factor=3"),
    ),
    (
        "pruner-setting-nan",
        None,
        [*SEARCH, "--pruner", "dominance:reduction_factor=.nan"],
        ("pruner reduction_factor must be a finite number > 1, got nan",),
    ),
    (
        "sampler-setting-not-a-number",
        None,
        [*SEARCH, "--sampler", "tpe:n_startup_trials=abc"],
        (
            "sampler tpe: n_startup_trials must be an integer >= 0, got 'abc'; e.g. "
            "tpe:n_startup_trials=8",
        ),
    ),
    (
        "sampler-setting-infinite",
        None,
        [*SEARCH, "--sampler", "nsga2:population_size=.inf"],
        ("sampler nsga2: population_size must be an integer >= 2, got inf",),
    ),
    (
        "timeout-overflows-to-infinity",
        None,
        [*SEARCH, "--timeout", "1e400"],
        ("argument --timeout: expected a finite positive number, got '1e400'",),
    ),
    (
        "finetune-lr-scale-nan",
        None,
        ["finetune", "--study", "s", "--lr-scale", "nan"],
        ("argument --lr-scale: expected a finite positive number, got 'nan'",),
    ),
    (
        "threads-beyond-the-machine",  # libgomp failed at 20,000, leaving trial 0 RUNNING
        None,
        [*SEARCH, "--threads", "20000"],
        (
            f"--threads 20000 is more than this machine runs: at most {max_threads()} "
            f"({THREADS_PER_CORE} per core, {machine_cores()} cores); pass --threads "
            f"{max_threads()} or fewer",
        ),
    ),
    (
        "workers-beyond-the-machine",
        None,
        [*SEARCH, "--workers", "1000"],
        (
            f"--workers 1000 is more than this machine holds: at most {max_workers()} "
            f"({WORKERS_PER_CORE} per core on {machine_cores()} cores",
            f"pass --workers {max_workers()} or fewer",
        ),
    ),
    (
        "local-ray-workers-beyond-the-machine",
        None,
        [*SEARCH, "--backend", "ray", "--workers", "1000"],
        (f"--workers 1000 is more than this machine holds: at most {max_workers()} ",),
    ),
    (
        "evaluate-seeds-beyond-the-cap",  # the list of seeds filled the memory
        None,
        ["evaluate", "--study", "s", "--seeds", "1000000000000"],
        (
            f"argument --seeds: at most {MAX_EVALUATE_SEEDS} seeds (each a full retraining of "
            f"every chosen trial), got '1000000000000'; pass --seeds {MAX_EVALUATE_SEEDS} or "
            "fewer",
        ),
    ),
    (
        "in-memory-sqlite-storage",  # the study vanished at exit, its checkpoints stayed
        None,
        [*SEARCH, "--storage", "sqlite:///:memory:"],
        (
            "--storage sqlite:///:memory: is an in-memory SQLite database",
            "pass a file, sqlite:///PATH",
        ),
    ),
    (
        "sqlite-storage-is-a-folder",  # it left an empty artifacts folder behind
        _nonempty_folder,
        [*SEARCH, "--storage", "sqlite:///out"],
        (
            "--storage sqlite:///out names out, which is a folder, not an SQLite database "
            "file; pass a file in it, e.g. sqlite:///out/study.db",
        ),
    ),
]


# Cases that fail for a known reason outside the code under test (none at present).
KNOWN_FAILURES: dict[str, str] = {}


@pytest.mark.parametrize(
    ("setup", "argv", "fragments"),
    [
        pytest.param(
            *case[1:],
            id=case[0],
            marks=[pytest.mark.xfail(strict=False, reason=KNOWN_FAILURES[case[0]])]
            if case[0] in KNOWN_FAILURES
            else [],
        )
        for case in CASES
    ],
)
# 113 cases at ~0.7 s each (a full gc.collect per case keeps earlier tests' ResourceWarnings
# out of the output): the slow suite; real processes are checked below by default
@pytest.mark.slow
def test_bad_input_is_one_clear_line_and_leaves_nothing(
    setup, argv, fragments, tiny_root, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    data = tmp_path / "data"
    uses_data = DATA in argv
    if uses_data:
        shutil.copytree(tiny_root, data)
    if setup is not None:
        setup(work, data)
    before_cache = _snapshot(cache_root())
    before_data = _snapshot(data)
    before_work = set(_snapshot(work))
    argv = [str(data) if a == DATA else a for a in argv]

    code, err = _run(argv, capsys)

    _assert_one_line_error(code, err, fragments)
    _assert_nothing_left(work, before_work)
    assert _snapshot(cache_root()) == before_cache, "the cache changed"
    assert _snapshot(data) == before_data, "the dataset changed"


def test_corpus_has_at_least_twenty_cases():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


# --- converted, not refused ------------------------------------------------------------------


def _rewrite_first_clip(data: Path, convert) -> Path:
    path = _first_clip(data)
    wave, rate = soundfile.read(str(path), dtype="float32")
    soundfile.write(str(path), *convert(wave, rate), subtype="PCM_24")
    return path


@pytest.mark.parametrize(
    ("convert", "note"),
    [
        (lambda w, r: (np.stack([w, w], axis=1), r), "1 with 2 channels averaged to mono"),
        (
            lambda w, r: (np.interp(np.arange(48000) * r / 48000, np.arange(len(w)), w), 48000),
            "1 at 48000 Hz resampled to 32000 Hz",
        ),
        (lambda w, r: (w[: len(w) // 2], r), "1 shorter than 1 s padded with silence"),
        (lambda w, r: (np.tile(w, 10), r), "1 longer than 1 s cut to their first second"),
    ],
    ids=["stereo", "48kHz", "half-a-second", "ten-seconds"],
)
def test_unusual_clips_are_converted_with_a_note(
    convert, note, tiny_root, tmp_path, caplog, monkeypatch
):
    # Tested on the loader (load_tau22 + load_features), where the conversion happens: through
    # the CLI the same note is printed on stderr by the teacher's feature pass, but that run
    # trains a teacher (tens of seconds on two shared cores).
    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.data.tau22 import load_tau22

    # a cache of its own: features cached by an earlier run of this test would skip the note
    monkeypatch.setenv("NAS_ASC_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    path = _rewrite_first_clip(data, convert)
    dataset = load_tau22(data)
    with caplog.at_level(logging.WARNING, logger="nas_asc.data.features"):
        train, evaluate = load_features(dataset, FrontEnd(n_mels=32), progress=False)
    notes = [r.getMessage() for r in caplog.records if "note:" in r.getMessage()]
    assert len(notes) == 1 and note in notes[0], caplog.text
    assert "\n" not in notes[0]
    rel = f"audio/{path.name}"
    split = train if rel in train.filenames else evaluate
    x = split.x[split.filenames.index(rel)]
    assert x.shape == (1, 32, 44) and bool(x.isfinite().all())
    assert float(x.std()) > 0  # real audio, not a zero-filled placeholder


# --- real processes: no traceback reaches the terminal ---------------------------------------


def _script(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else shutil.which(name) or name


def test_real_processes_print_one_line_and_no_traceback(tmp_path):
    # Three entry points, started together: each process spends seconds importing torch, so
    # running them side by side keeps this test about as long as one of them.
    _write("lh.yaml", _space("model.width: {type: int, low: 40, high: 8}"))(tmp_path, tmp_path)
    runs = {
        "python -m nas_asc.cli": (
            [sys.executable, "-m", "nas_asc.cli", "search", "--space", "lh.yaml"],
            "low 40 > high 8",
        ),
        "nas-asc script": (
            [_script("nas-asc"), "search", "--space", "cnn", "--storage", UNREACHABLE_DB],
            "cannot open study storage",
        ),
        "python -m nas_asc": (
            [sys.executable, "-m", "nas_asc", "export", "--study", "nope", "--out", "x"],
            "no study database",
        ),
    }
    env = {k: v for k, v in os.environ.items() if k != "NAS_ASC_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    procs = {
        name: subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (argv, _) in runs.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=180)
        line = _assert_one_line_error(proc.returncode, err, (runs[name][1],))
        assert proc.returncode == 2, (name, line)
    assert not list(tmp_path.rglob("*.db"))
    assert not (tmp_path / "reports").exists() and not (tmp_path / "x").exists()
