"""Parallel workers sharing one study on a real PostgreSQL server, through the real CLI.

CI starts a throwaway server on loopback (``.ci/postgres.sh``) and exports its URL as
``NAS_ASC_TEST_POSTGRES``; with ``NAS_ASC_REQUIRE_POSTGRES=1`` (set by CI) a missing server fails
these tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from nas_asc.cli import main
from nas_asc.search.study import trial_counts

POSTGRES = os.environ.get("NAS_ASC_TEST_POSTGRES")

SPACE_YAML = """
name: workers
model: tfsepnet
fixed:
  frontend: {n_mels: 32}
  train: {batch_size: 32, lr: 0.02, epochs: 1}
dimensions:
  model.width: {type: int, low: 8, high: 16, step: 4}
  train.kd_lambda: {type: float, low: 0.0, high: 0.5}
"""


@pytest.fixture()
def postgres_url():
    if not POSTGRES:
        if os.environ.get("NAS_ASC_REQUIRE_POSTGRES"):
            pytest.fail("NAS_ASC_REQUIRE_POSTGRES is set but NAS_ASC_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL server (set NAS_ASC_TEST_POSTGRES; .ci/postgres.sh starts one)")
    return POSTGRES


@pytest.fixture()
def warm_teacher(tiny_search):
    """Train the tiny dataset's search teacher once, so the workers do not all train it."""
    from nas_asc.train.teacher import get_teacher

    get_teacher(tiny_search, progress=False)


def _worker(cwd, space, root, url, study, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "nas_asc", "search", "--space", str(space), "--data", str(root)]
        + ["--storage", url, "--study", study, "--trials", "8", "--pruner", "none", *extra],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@pytest.mark.slow  # two processes of two workers, 8 trials and an evaluate (100 s in CI)
def test_four_workers_share_one_study_without_losing_or_repeating_a_trial(
    postgres_url, tiny_root, warm_teacher, tmp_path
):
    space = tmp_path / "workers.yaml"
    space.write_text(SPACE_YAML)
    study_name = f"workers-{uuid.uuid4().hex[:8]}"
    # two processes with two workers each: 4 workers, as on two machines
    procs = [
        _worker(tmp_path / f"m{i}", space, tiny_root, postgres_url, study_name, "--workers", "2")
        for i in range(2)
        if (tmp_path / f"m{i}").mkdir() is None
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # no gap, no duplicate number
    assert all(t.state == TrialState.COMPLETE for t in trials)  # nothing lost mid-way
    # 8 asked for; workers that start together may each begin one more (at most workers - 1)
    assert 8 <= len(trials) <= 11
    assert trial_counts(study).done == len(trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= 3  # the work was really shared
    # every trial was run by exactly one worker: each printed trial line appears once overall
    printed = [
        int(n)
        for out, _ in outputs
        for n in re.findall(r"^trial (\d+) \[\d+/\d+\]: ", out, flags=re.M)
    ]
    assert sorted(printed) == numbers
    for t in trials:
        assert t.user_attrs["status"] == "trained"
        assert 0.0 <= t.values[0] <= 1.0
    # each process measured the front it saw at its end on the test fold; the last one saw
    # the final front
    front = [t for t in trials if "test_int8_accuracy" in t.user_attrs]
    assert {t.number for t in study.best_trials} <= {t.number for t in front}

    # the reports' final protocol works on a study of server-database workers too
    from nas_asc.cli import main

    number = str(front[0].number)
    argv = ["-q", "evaluate", "--study", study_name, "--storage", postgres_url, "--seeds", "1"]
    assert main([*argv, "--trials", number, "--reports", str(tmp_path / "r")]) == 0
    evaluated = optuna.load_study(study_name=study_name, storage=postgres_url).trials[int(number)]
    assert evaluated.user_attrs["evaluation"]["seeds"] == 1


def test_parallel_workers_on_sqlite_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["search", "--space", "tfsepnet", "--workers", "4", "--study", "w"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("nas-asc: error: 4 parallel workers need a database server")
    assert "postgresql://" in err and "--backend ray" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()
    assert not list((tmp_path / "studies").glob("*.db"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.slow  # two searches of two worker processes each
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the worker processes from /proc")
def test_workers_end_with_their_killed_parent_and_the_search_continues(
    postgres_url, tiny_root, warm_teacher, tmp_path
):
    """kill -9 of a two-worker search: the workers do not train on, printing to the terminal,
    but end within seconds; their trials are re-queued (each copy saying why), and the same
    command finishes the search."""
    import signal
    import time

    space = tmp_path / "workers.yaml"
    space.write_text(SPACE_YAML.replace("epochs: 1", "epochs: 6").replace("32,", "8,"))
    study_name = f"orphans-{uuid.uuid4().hex[:8]}"
    proc = _worker(tmp_path, space, tiny_root, postgres_url, study_name, "--workers", "2")
    seen: list[str] = []
    for line in proc.stdout:  # both workers training
        seen.append(line)
        if sum("epoch 2/" in s for s in seen) >= 2:
            break
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    workers = [int(pid) for pid in out.stdout.split()]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "workers outlived their parent"

    # the same command, its trials cut to one epoch (the test's time)
    args = ("--workers", "2", "-q", "--epochs", "1")
    again = _worker(tmp_path, space, tiny_root, postgres_url, study_name, *args)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=study_name, storage=postgres_url)
    counts = trial_counts(study)
    assert counts.running == counts.waiting == 0 and counts.done >= 8
    stopped = [t for t in study.trials if t.state == TrialState.FAIL]
    assert stopped  # the trials the workers were running
    copies = [t for t in study.trials if "requeued_after" in t.user_attrs]
    assert {t.user_attrs["requeued_after"].split()[1] for t in copies} == {
        str(t.number) for t in stopped
    }
