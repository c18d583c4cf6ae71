"""End to end through the real CLI on the embedded dataset (slow: trains real models)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _search(cwd, *args: str, timeout: int) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "nas_asc", "search", "--space", "tfsepnet", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ),
        timeout=timeout,
    )
    return r, time.perf_counter() - start


def _non_dominated(rows: list[dict]) -> set[str]:
    """Trial numbers of the rows no other row dominates (int8 accuracy up, MACs and bytes down)."""

    def key(row):
        return (-float(row["int8_accuracy"]), int(float(row["macs"])), int(row["param_bytes"]))

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return {r["trial"] for r in rows if not any(dominates(key(o), key(r)) for o in rows)}


def test_default_search_meets_the_readme_promise(tmp_path):
    """The README's main job: 12 trained candidates (proposals over budget rejected on top,
    uncounted) and the Pareto front of its in-budget int8 models, with a trade-off (>= 2
    points).

    How many points the front has depends on the training's float rounding, which differs
    between CPUs (and, with ``--threads auto``, with the load): the README's run had 3, one CI
    run 2, from the same first six candidates trained to other figures. So the front is checked
    exactly against ``trials.csv`` instead of by a count one machine happens to reach.
    """
    r, seconds = _search(tmp_path, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout[-4000:])
    print(f"default search wall time: {seconds:.0f} s")
    with open(tmp_path / "reports" / "tfsepnet" / "trials.csv") as fh:
        trials = list(csv.DictReader(fh))
    with open(tmp_path / "reports" / "tfsepnet" / "pareto.csv") as fh:
        pareto = list(csv.DictReader(fh))
    assert sum(t["status"] != "infeasible" for t in trials) == 12  # --trials counts these
    trained = [t for t in trials if t["state"] == "COMPLETE" and t["status"] == "trained"]
    assert len(trained) >= 5
    assert {row["trial"] for row in pareto} == _non_dominated(trained)
    assert len(pareto) >= 2
    for row in pareto:
        assert int(float(row["macs"])) <= 30_000_000
        assert int(float(row["param_bytes"])) <= 128_000
        assert 0.1 < float(row["int8_accuracy"]) < 1.0  # validation
        assert 0.1 < float(row["test_int8_accuracy"]) < 1.0  # the test fold, measured once
    assert "val int8 %" in r.stdout and "test int8 %" in r.stdout
    assert "Kendall tau" in r.stdout
    assert (tmp_path / "studies" / "tfsepnet.db").exists()
    assert (tmp_path / "reports" / "tfsepnet" / "pareto.html").stat().st_size > 10_000
    assert (tmp_path / "reports" / "tfsepnet" / "index.html").stat().st_size > 10_000
    assert "Pareto" in r.stdout or "pareto" in r.stdout

    # the user's last step: export the Pareto set, re-verified with ONNX Runtime
    ex = subprocess.run(
        [sys.executable, "-m", "nas_asc", "export", "--study", "tfsepnet", "--out", "exported"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert ex.returncode == 0, ex.stderr[-3000:]
    cards = sorted((tmp_path / "exported").glob("tfsepnet-trial*/card.json"))
    assert len(cards) == len(pareto)
    for card in cards:
        assert (card.parent / "model_int8.onnx").stat().st_size > 1_000

    # the reports' final protocol on one front model: retrained on train + validation
    first = pareto[0]["trial"]
    ev = subprocess.run(
        [sys.executable, "-m", "nas_asc", "evaluate", "--study", "tfsepnet", "--trials", first]
        + ["--seeds", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    print(ev.stdout[-2000:])
    assert "retrained int8 %" in ev.stdout and " ± " in ev.stdout


def test_search_continues_a_study_and_report_rewrites_it(tmp_path):
    r, _ = _search(tmp_path, "--trials", "2", "--epochs", "1", "--study", "s", timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    r, _ = _search(tmp_path, "--trials", "3", "--epochs", "1", "--study", "s", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "reports" / "s" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(row["status"] != "infeasible" for row in rows) == 3  # rejected ones on top
    rep = subprocess.run(
        [sys.executable, "-m", "nas_asc", "report", "--study", "s"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr
    assert "pareto.html" in rep.stdout
