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
import errno
import os
import shutil
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


def _start(
    cwd: Path,
    space: Path,
    root: Path,
    db: Path,
    n_trials: int = N_TRIALS,
    prefix: tuple[str, ...] = (),
    env: dict | None = None,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen:
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "nas_asc", "search", "--space", str(space)]
        + ["--data", str(root), "--storage", f"sqlite:///{db}", "--study", "drill"]
        + ["--trials", str(n_trials), "--heartbeat", "1", "--pruner", "none", *extra],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
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
    assert counts.done == N_TRIALS == counts.trained
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


class _SmallDisk:
    """A 64 MiB tmpfs at ``path``, mounted in a mount namespace of its own (an unprivileged user
    namespace: no root needed, nothing mounted on the host). Commands run in it through
    ``prefix``; this process reaches its files through ``/proc/<pid>/root``."""

    SIZE = "64m"

    def __init__(self, path: Path) -> None:
        if not (shutil.which("unshare") and shutil.which("nsenter")):
            pytest.skip("no unshare/nsenter (util-linux) on this machine")
        path.mkdir()
        self.path = path
        self._holder = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
            + [f'mount -t tmpfs -o size={self.SIZE} tmpfs "{path}" && echo mounted; exec sleep 1h'],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self._holder.stdout.readline().strip() != "mounted":
            err = self._holder.communicate()[1].strip()
            pytest.skip(f"cannot mount a tmpfs in a user namespace here: {err}")
        pid = str(self._holder.pid)
        self.prefix = ("nsenter", "-t", pid, "-U", "-m", "--preserve-credentials")
        self.view = Path(f"/proc/{pid}/root{path}")  # the tmpfs, seen from this process
        self._copies = path.parent / "copies"
        self._copies.mkdir()

    def copy_out(self, name: str) -> Path:
        """A copy of the file ``name`` on this process's side (SQLite resolves the
        ``/proc/<pid>/root`` link to the host's path, so it cannot open the file in place)."""
        copy = self._copies / name
        shutil.copyfile(self.view / name, copy)
        return copy

    def fill(self) -> None:
        """Write a file until the disk is full (ENOSPC)."""
        with pytest.raises(OSError) as full, open(self.view / "filler", "wb") as f:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        assert full.value.errno == errno.ENOSPC

    def free(self) -> None:
        (self.view / "filler").unlink()

    def close(self) -> None:
        self._holder.kill()
        self._holder.wait()


def _artifact_files_and_references(study: optuna.Study, folder: Path) -> tuple[set, set]:
    referenced = {
        key.removeprefix("artifacts:")
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        for key in t.system_attrs
        if key.startswith("artifacts:")
    }
    return {p.name for p in folder.iterdir()}, referenced


@pytest.mark.slow  # a minute each: a search stopped by a full disk, then rerun
@pytest.mark.parametrize("on_disk", ["everything", "artifacts"])
def test_a_full_disk_mid_trial_then_freed_and_rerun_finishes(on_disk, tiny_root, tmp_path):
    """A small disk is filled while a trial trains. On it: the study's SQLite file, its
    artifacts, the caches and the temporary files (``everything``: the database's next write
    fails), or only the artifact folder (``artifacts``: the trial trains to its end and its
    checkpoint's upload fails). The search stops with one line and exit 2 and leaves the trial
    re-runnable; once the disk is freed the same command finishes the study, and no file of the
    stopped trial is left behind."""
    n_trials = 3
    space = tmp_path / "crash.yaml"
    space.write_text(SPACE_YAML)
    disk = _SmallDisk(tmp_path / "disk")
    try:
        if on_disk == "everything":
            cwd, db, artifacts = (
                disk.path,
                disk.path / "drill.db",
                disk.view / "drill" / "artifacts",
            )
            env = {"NAS_ASC_CACHE": str(disk.path / "cache"), "TMPDIR": str(disk.path)}
            extra: tuple[str, ...] = ()

            def readable_db() -> Path:
                return disk.copy_out(db.name)

        else:
            cwd, db, artifacts, env = tmp_path, tmp_path / "drill.db", disk.view / "artifacts", {}
            extra = ("--artifacts", str(disk.path / "artifacts"))

            def readable_db() -> Path:
                return db

        run = dict(n_trials=n_trials, prefix=disk.prefix, env=env, extra=extra)
        proc = _start(cwd, space, tiny_root, db, **run)
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the search never reached its second trial"
            time.sleep(0.1)
            try:  # a copy taken mid-write can be torn: the next one will do
                copy = readable_db()
                states = [s for _, s in _states(copy)]
                if states.count("COMPLETE") >= 1 and _fresh_running(copy, set()):
                    break
            except (OSError, sqlite3.DatabaseError):
                continue
        completed_before = _completed(copy)
        disk.fill()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        # one line (after the feature progress bars), no traceback from any thread
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
        assert last.startswith("nas-asc: error: "), err[-3000:]
        assert "disk is full" in last or "No space left on device" in last, last
        assert "run the same command again" in last, last
        print("DRILL", last)

        disk.free()
        proc = _start(cwd, space, tiny_root, db, **run)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        copy = readable_db()
        with sqlite3.connect(copy) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        study = optuna.load_study(study_name="drill", storage=f"sqlite:///{copy}")
        counts = trial_counts(study)
        assert counts.done == n_trials == counts.trained
        assert counts.running == counts.waiting == counts.failed == 0
        assert counts.retried >= 1  # the trial the full disk stopped, run again
        final = _completed(copy)
        assert all(final[n] == record for n, record in completed_before.items())
        # the stopped trial's files went with it: the artifact folder holds the completed
        # trials' files, every one of them, and nothing else
        files, referenced = _artifact_files_and_references(study, artifacts)
        assert files == referenced and referenced
        assert not [p for p in disk.view.iterdir() if p.name.startswith("nas-asc-")]
    finally:
        disk.close()


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


@pytest.mark.slow  # a search killed once, then continued: two processes
def test_a_killed_trials_copy_says_why_and_the_continued_search_is_quiet(tiny_root, tmp_path):
    """kill -9 leaves the trial RUNNING; the next run finds its heartbeat stale and queues a
    copy that records why in ``requeued_after`` (as README promises), starts clean (none of
    the dead run's figures) and prints no warning of Optuna's (its own retry copied the
    constraints, which the copy then set again: "The constraint value is ignored")."""
    space = tmp_path / "crash.yaml"
    space.write_text(SPACE_YAML)
    db = tmp_path / "drill.db"
    proc = _start(tmp_path, space, tiny_root, db, n_trials=2)
    _kill_mid_trial(proc, db, min_complete=0)
    assert "RUNNING" in [s for _, s in _states(db)]
    proc = _start(tmp_path, space, tiny_root, db, n_trials=2, extra=("-q", "--epochs", "1"))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert err == "", err[-3000:]
    study = optuna.load_study(study_name="drill", storage=f"sqlite:///{db}")
    copies = [t for t in study.trials if retry_history(t)]
    assert len(copies) == 1 and copies[0].state == TrialState.COMPLETE
    killed = study.trials[retry_history(copies[0])[0]]
    assert copies[0].user_attrs["requeued_after"] == (
        f"trial {killed.number} was left running by a worker that died (no heartbeat for 4 s)"
    )
    assert copies[0].params == killed.params
    assert trial_counts(study).done == 2
