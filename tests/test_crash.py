"""Crash drill: kill -9 a search mid-trial three times, restart it each time, lose nothing.

The same drill with Ctrl-C (SIGINT) and SIGTERM: the search stops at once with exit 130 and one
line, the interrupted trial is re-queued then and there (none is left RUNNING), and the restarted
search ends with the requested number of completed trials.

Each restart is the same ``nas-asc search`` command. The drill checks that the study reaches its
trial count exactly, that every trial completed before a kill is still there unchanged, that each
killed trial was re-queued (same parameters, same seed) and completed once, that the SQLite file
passes its integrity check, and that the feature and teacher caches still verify.
"""

from __future__ import annotations

import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas_asc.search.study import retry_history, trial_counts

N_TRIALS = 6

SPACE_YAML = """
name: crash
model: tfsepnet
fixed:
  frontend: {n_mels: 32}
  train: {batch_size: 8, lr: 0.01, epochs: 12, kd_lambda: 0.3}
dimensions:
  model.width: {type: int, low: 8, high: 16, step: 4}
  train.mixstyle_p: {type: float, low: 0.0, high: 0.5}
"""


def _start(cwd: Path, space: Path, root: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nas_asc", "search", "--space", str(space), "--data", str(root)]
        + ["--storage", f"sqlite:///{db}", "--study", "drill", "--trials", str(N_TRIALS)]
        + ["--heartbeat", "1", "--pruner", "none"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def _states(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _fresh_running(db: Path, leftovers: set[int]) -> bool:
    """Whether a trial that is not the retry of a killed one, nor left behind by a killed worker
    (``leftovers``: trials that existed when this worker started), has been running for a
    second: training, well inside a trial that takes seconds."""
    with sqlite3.connect(db, timeout=30) as con:
        try:
            rows = con.execute(
                "SELECT t.number FROM trials t WHERE t.state = 'RUNNING' AND NOT EXISTS (SELECT 1 "
                "FROM trial_system_attributes a WHERE a.trial_id = t.trial_id AND "
                "a.key = 'retry_history') AND t.datetime_start < ?",
                (str(datetime.datetime.now() - datetime.timedelta(seconds=1)),),
            ).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return False
    return any(number not in leftovers for (number,) in rows)


def _kill_mid_trial(
    proc: subprocess.Popen, db: Path, min_complete: int, sig: int = signal.SIGKILL
) -> str:
    """Wait until ``min_complete`` trials are complete and a fresh one is running, then kill -9.

    Three kills hit three different trials. (Killing the retry of a killed trial again and
    again ends its chain after ``max_retry`` re-queues as failed for good, by design, so that a
    trial that reliably kills its worker, e.g. out of memory, cannot stall a search;
    ``test_faults`` covers that path.)
    """
    leftovers = {number for number, _ in _states(db)}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        states = [s for _, s in _states(db)]
        if states.count("COMPLETE") >= min_complete and _fresh_running(db, leftovers):
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            return err
        time.sleep(0.1)
    raise AssertionError("the search never reached the point to kill it")


def _completed(db: Path) -> dict[int, tuple]:
    study = optuna.load_study(study_name="drill", storage=f"sqlite:///{db}")
    return {
        t.number: (tuple(t.values), t.params, t.user_attrs["seed"])
        for t in study.get_trials(states=(TrialState.COMPLETE,))
    }


@pytest.mark.slow  # minutes: a search killed three times, each restart a new process
@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name
)
def test_kill_three_times_then_finish(sig, tiny_root, tmp_path):
    space = tmp_path / "crash.yaml"
    space.write_text(SPACE_YAML)
    db = tmp_path / "drill.db"
    seen: dict[int, tuple] = {}
    for kill in range(3):
        proc = _start(tmp_path, space, tiny_root, db)
        err = _kill_mid_trial(proc, db, min_complete=kill + 1, sig=sig)
        now = _completed(db)
        for number, record in seen.items():
            assert now[number] == record, f"completed trial {number} changed after a kill"
        seen.update(now)
        states = [s for _, s in _states(db)]
        if sig == signal.SIGKILL:
            assert "RUNNING" in states  # the killed trial is left behind
        else:  # stopped cleanly: the trial re-queued at once, one line, exit 130
            assert proc.returncode == 130, err[-3000:]
            assert err.strip().splitlines()[-1].startswith("nas-asc: interrupted; "), err
            assert "Traceback" not in err, err
            assert "RUNNING" not in states and "WAITING" in states, states
    proc = _start(tmp_path, space, tiny_root, db)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    # the storage opens cleanly
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    study = optuna.load_study(study_name="drill", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    counts = trial_counts(study)
    assert counts.done == N_TRIALS == counts.trained + counts.infeasible
    assert counts.running == counts.waiting == counts.failed == 0
    assert counts.retried >= 3  # one per kill (a kill between epochs of the retry adds more)

    final = _completed(db)
    for number, record in seen.items():  # nothing completed before a kill was lost or changed
        assert final[number] == record
    # every killed trial was re-queued with its parameters and seed and completed exactly once
    seeds = [seed for _, _, seed in final.values()]
    assert len(seeds) == len(set(seeds)), "a trial was completed twice"
    by_number = {t.number: t for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL:
            retries = [
                r for r in trials if t.number in retry_history(r) and r.state == TrialState.COMPLETE
            ]
            assert len(retries) == 1, f"killed trial {t.number} was not completed exactly once"
            assert retries[0].params == by_number[t.number].params
    assert "re-queued after an interrupt or a dead worker" in out

    # the caches the killed runs were using still verify
    from nas_asc._cache import cache_root

    cached = list((cache_root() / "features").glob("*.pt")) + list(
        (cache_root() / "teachers").glob("*.pt")
    )
    assert cached
    verify = _cache_verifier()
    for path in cached:
        verify(path)


def _cache_verifier():
    """The cache's own checksum check where it has one, else a plain load."""
    import nas_asc._cache as cache

    load = getattr(cache, "load_torch", None)
    if load is not None:

        def verify(path):
            assert load(path) is not None, f"cache entry {path} failed its checksum"

        return verify
    import torch

    return lambda path: torch.load(path, weights_only=False)
