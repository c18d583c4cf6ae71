"""The command line, run as a user would run it: a subprocess of the installed entry point where
the process itself is under test, else ``main()`` in this process (the same parser, commands,
messages and exit codes, without a second torch import per case)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("NAS_ASC_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "nas_asc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )


def here(capsys, monkeypatch, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """``nas-asc ARGS`` through ``main()`` in this process, in ``cwd``: exit code and output."""
    from nas_asc.cli import main

    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_complexity_json_reproduces_the_report_c40_count(capsys, monkeypatch):
    r = here(
        capsys,
        monkeypatch,
        "complexity",
        "tfsepnet",
        "--set",
        "width=40",
        "--input",
        "1x128x44",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "params": 54270,
        "param_bytes": 57510,
        "macs": 10220340,
        # the stem's 80 x 64 x 22 output and the AdaResNorm (deployed in float) output beside it
        "peak_activation_bytes": 2 * 80 * 64 * 22,
    }


def test_complexity_text_says_whether_it_fits(capsys, monkeypatch):
    r = here(capsys, monkeypatch, "complexity", "tfsepnet", "--set", "width=64")
    assert r.returncode == 0, r.stderr
    assert "OVER budget" in r.stdout and "135,210 parameter bytes > 128,000" in r.stdout


def _one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("complexity", "nope"), ("unknown model 'nope'", "tfsepnet")),
        (("complexity", "tfsepnet", "--set", "width"), ("--set takes KEY=VALUE",)),
        (("complexity", "tfsepnet", "--set", "depth=3"), ("unknown config field",)),
        (("complexity", "tfsepnet", "--input", "1x0x44"), ("input shape",)),
        (("complexity", "tfsepnet", "--budget", "macs=-1"), ("not a number",)),
        (("search", "--space", "nope"), ("no search space named 'nope'", "tfsepnet")),
        (("search", "--space", "tfsepnet", "--budget", "huge"), ("unknown budget preset",)),
        (("search", "--space", "tfsepnet", "--trials", "0"), ("positive integer",)),
        (("report", "--study", "missing"), ("no study database",)),
        (("dashboard", "--study", "missing"), ("no study database",)),
        (("dashboard", "--study", "x", "--port", "70000"), ("a port is 1..65535",)),
        (("export", "--study", "missing", "--out", "x"), ("no study database",)),
        (("export", "--study", "x", "--out", "x", "--trials", "a,b"), ("trial numbers",)),
    ],
)
# 13 subprocesses (43 s); tests/test_bad_input.py runs its corpus in-process and real processes once
@pytest.mark.slow
def test_bad_input_gives_one_clear_line(args, fragments, tmp_path):
    _one_line_error(run(*args, cwd=tmp_path), *fragments)


def test_search_with_a_missing_dataset_root_fails_before_doing_anything(
    tmp_path, capsys, monkeypatch
):
    missing = str(tmp_path / "nowhere")
    r = here(capsys, monkeypatch, "search", "--space", "tfsepnet", "--data", missing, cwd=tmp_path)
    _one_line_error(r, "does not exist")
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


def test_search_with_a_malformed_space_file(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nmodel: tfsepnet\ndimensions:\n  model.width: {type: int, low: 9, high: 2}\n"
    )
    r = here(capsys, monkeypatch, "search", "--space", str(bad), cwd=tmp_path)
    _one_line_error(r, "low", "high")


def test_data_synth_refuses_a_non_empty_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    r = here(capsys, monkeypatch, "data", "synth", "--out", str(tmp_path), cwd=tmp_path)
    _one_line_error(r, "not empty")
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("value", "traceback"),
    [("0", False), ("false", False), ("off", False), ("", False), ("1", True), ("yes", True)],
)
def test_nas_asc_debug_zero_means_off(value, traceback, tmp_path, monkeypatch, capsys):
    """NAS_ASC_DEBUG=0 (or false, no, off, empty) keeps the one-line error; 1/yes show the
    traceback (issue 15: any non-empty value used to turn tracebacks on)."""
    from nas_asc.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAS_ASC_DEBUG", value)
    code = main(["-q", "complexity", "tfsepnet", "--input", "1x1x1"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("Traceback" in err) is traceback, err
    if not traceback:
        assert err.count("\n") == 1 and err.startswith("nas-asc: error: tfsepnet cannot run")


# --- issue 34: -q/-v on either side of the command, reproducible threads, limits in --help ----

# every command with its required arguments (parsing only: nothing runs)
_COMMAND_ARGS = {
    "search": ["search", "--space", "tfsepnet"],
    "complexity": ["complexity", "tfsepnet"],
    "data": ["data", "synth", "--out", "o"],
    "teacher": ["teacher"],
    "report": ["report", "--study", "s"],
    "evaluate": ["evaluate", "--study", "s"],
    "finetune": ["finetune", "--study", "s"],
    "dashboard": ["dashboard", "--study", "s"],
    "export": ["export", "--study", "s", "--out", "o"],
}


def test_the_flag_table_covers_every_command():
    from nas_asc import cli

    assert set(_COMMAND_ARGS) == set(cli._COMMANDS)


@pytest.mark.parametrize("command", sorted(_COMMAND_ARGS))
@pytest.mark.parametrize(
    ("before", "after", "quiet", "verbose"),
    [
        ([], [], False, False),
        (["-q"], [], True, False),
        ([], ["-q"], True, False),
        (["--verbose"], [], False, True),
        ([], ["-v"], False, True),
        (["-v"], ["-q"], True, True),  # one on each side: the command's default resets neither
        (["-q"], ["-v"], True, True),
        ([], ["--quiet", "--verbose"], True, True),
    ],
)
def test_quiet_and_verbose_are_taken_before_and_after_the_command(
    command, before, after, quiet, verbose
):
    from nas_asc.cli import build_parser

    args = build_parser().parse_args([*before, *_COMMAND_ARGS[command], *after])
    assert (args.quiet, args.verbose) == (quiet, verbose)


def test_verbose_after_the_command_reaches_the_command(tmp_path, monkeypatch, capsys):
    """``-v`` after the command turns on Optuna's log lines, and a ``-q`` after the command
    does not undo a ``-v`` before it."""
    import logging

    import optuna

    from nas_asc.cli import main

    monkeypatch.chdir(tmp_path)
    before = optuna.logging.get_verbosity()
    try:
        assert main(["complexity", "tfsepnet", "--json", "-v"]) == 0
        assert optuna.logging.get_verbosity() == logging.INFO
        assert main(["-v", "complexity", "tfsepnet", "--json", "-q"]) == 0
        assert optuna.logging.get_verbosity() == logging.INFO
        assert main(["complexity", "tfsepnet", "--json"]) == 0
        assert optuna.logging.get_verbosity() == logging.WARNING
    finally:
        optuna.logging.set_verbosity(before)
    assert capsys.readouterr().err == ""
    assert not list(tmp_path.iterdir())


def test_quiet_after_the_command_is_not_an_unrecognized_argument(tmp_path, capsys, monkeypatch):
    """The command of the issue, ``nas-asc search --space tfsepnet -q``: the flag is taken
    (the run then stops at the bad --trials, in one line, before any work)."""
    args = ("search", "--space", "tfsepnet", "-q", "--trials", "0")
    r = here(capsys, monkeypatch, *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == (
        "nas-asc: error: argument --trials: expected a positive integer, got '0' "
        "(see nas-asc search --help)\n"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "threads", "adapt"),
    [
        ([], None, False),  # the default: each trial's share of the cores, whatever the load
        (["--threads", "auto"], None, True),  # adapting to the load only when asked for
        (["--threads", "1"], 1, False),
    ],
)
def test_the_default_thread_count_does_not_follow_the_load(
    flags, threads, adapt, tmp_path, monkeypatch, capsys
):
    from nas_asc.cli import main
    from nas_asc.errors import NasAscError
    from nas_asc.search import settings

    seen = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise NasAscError("recorded")

    monkeypatch.setattr(settings, "SearchSettings", record)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "search", "--space", "tfsepnet", *flags]) == 2
    assert capsys.readouterr().err == "nas-asc: error: recorded\n"
    assert (seen["threads"], seen["adapt_threads"]) == (threads, adapt)
    assert not list(tmp_path.iterdir())


def test_default_settings_train_on_the_fixed_share_of_the_cores():
    from nas_asc.search.settings import SearchSettings

    options = SearchSettings("s", "sqlite:///s.db", 1).runtime()
    assert (options.threads, options.adapt_threads, options.device) == (None, False, "cpu")


def test_help_names_the_machine_limits(capsys):
    from nas_asc.cli import main
    from nas_asc.search.settings import (
        MAX_EVALUATE_SEEDS,
        THREADS_PER_CORE,
        WORKERS_PER_CORE,
        max_threads,
        max_workers,
    )

    texts = {}
    for command in ("search", "evaluate"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        texts[command] = " ".join(capsys.readouterr().out.split())
    assert f"(at most {THREADS_PER_CORE} per core, here {max_threads()})" in texts["search"]
    assert (
        f"at most {WORKERS_PER_CORE} per core and one per 1.3 GB of memory, here "
        f"{max_workers()}" in texts["search"]
    )
    assert "Default: each trial's share of the cores (cores // --workers)" in texts["search"]
    assert f"(default: 3, at most {MAX_EVALUATE_SEEDS})" in texts["evaluate"]


def test_a_teacher_near_chance_is_named_before_the_trials():
    from nas_asc.pipeline.search import weak_teacher_note

    # the DCASE 2025 walk-through on the embedded data's 25 % split: 478 clips, teacher 19.6 %
    note = weak_teacher_note(0.196, 478)
    assert note.startswith("note: the teacher reaches only 19.6% on the validation split")
    assert "478 training clips are too few" in note and "\n" not in note
    assert weak_teacher_note(0.53, 1888) == ""  # the Quick start's teacher
    assert weak_teacher_note(None, 478) == ""  # a teacher-logits file without a figure
