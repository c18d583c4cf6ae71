"""The command line, run as a user would run it (a subprocess of the installed entry point)."""

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


def test_complexity_json_reproduces_the_report_c40_count():
    r = run("complexity", "tfsepnet", "--set", "width=40", "--input", "1x128x44", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "params": 54270,
        "param_bytes": 57510,
        "macs": 10220340,
        # the stem's 80 x 64 x 22 output and the AdaResNorm (deployed in float) output beside it
        "peak_activation_bytes": 2 * 80 * 64 * 22,
    }


def test_complexity_text_says_whether_it_fits():
    r = run("complexity", "tfsepnet", "--set", "width=64")
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
def test_bad_input_gives_one_clear_line(args, fragments, tmp_path):
    _one_line_error(run(*args, cwd=tmp_path), *fragments)


def test_search_with_a_missing_dataset_root_fails_before_doing_anything(tmp_path):
    r = run("search", "--space", "tfsepnet", "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    _one_line_error(r, "does not exist")
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


def test_search_with_a_malformed_space_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nmodel: tfsepnet\ndimensions:\n  model.width: {type: int, low: 9, high: 2}\n"
    )
    _one_line_error(run("search", "--space", str(bad), cwd=tmp_path), "low", "high")


def test_data_synth_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    _one_line_error(run("data", "synth", "--out", str(tmp_path), cwd=tmp_path), "not empty")
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
