"""Clean ends (issue 34), through the real command in processes of their own: an interrupt at
any moment (worker start-up, two Ctrl-C in quick succession, after the command has finished) is
one line and exit code 130, and a search's console carries no library noise (a progress bar
before an error, torch's CUDA notice under ``--compile on`` on a machine without a GPU).

Ctrl-C is sent as a terminal sends it: SIGINT to every process of the command's group.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas_asc.search.study import trial_counts

POSTGRES = os.environ.get("NAS_ASC_TEST_POSTGRES")

# a trial of some seconds (12 epochs of batch 8), so that it is interrupted mid-way
SPACE_YAML = """
name: interrupts
model: tfsepnet
fixed:
  frontend: {n_mels: 32}
  train: {batch_size: 8, lr: 0.01, epochs: 12, kd_lambda: 0.3}
dimensions:
  model.width: {type: int, low: 8, high: 16, step: 4}
  train.mixstyle_p: {type: float, low: 0.0, high: 0.5}
"""


class _Command:
    """``python -m nas_asc ARGS`` in a process group of its own, its stdout read as it comes."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nas_asc", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in the output: {self.lines}"
            time.sleep(0.01)

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # as the terminal does: the whole group

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        err = self.proc.stderr.read()
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.proc.returncode, err


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _assert_one_interrupt_line(code: int, err: str) -> None:
    # progress bars aside (the features computed on first use draw one on stderr)
    lines = [line for line in err.splitlines() if line.strip() and not re.search(r"\d%\|", line)]
    assert code == 130, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("nas-asc: interrupted"), err[-3000:]


def _search_args(space: Path, root: Path, storage: str, study: str, *extra: str) -> list[str]:
    return [
        *("search", "--space", str(space), "--data", str(root), "--storage", storage),
        *("--study", study, "--pruner", "none", "--threads", "1", "--heartbeat", "1", *extra),
    ]


needs_linux = pytest.mark.skipif(
    not Path("/proc").is_dir(), reason="reads processes from /proc, signals process groups"
)


@needs_linux
@pytest.mark.slow  # a search started and interrupted twice, a process each
@pytest.mark.parametrize("gap", [0.01, 0.06], ids=["10ms", "60ms"])
def test_two_quick_ctrl_c_are_one_line_and_the_trial_is_requeued(gap, tiny_root, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    db = tmp_path / "s.db"
    storage = f"sqlite:///{db}"
    cmd = _Command(tmp_path, *_search_args(space, tiny_root, storage, "s", "--trials", "2"))
    cmd.wait_for("trial 0: epoch 1/")
    cmd.ctrl_c()
    time.sleep(gap)  # the second one arrives while the first one is being handled
    cmd.ctrl_c()
    code, err = cmd.finish()
    _assert_one_interrupt_line(code, err)
    assert "Exception ignored" not in err and "Traceback" not in err
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING in states, states
    queued = [t for t in study.trials if t.state == TrialState.WAITING]
    assert all("was interrupted" in t.user_attrs["requeued_after"] for t in queued)


@needs_linux
@pytest.mark.slow  # eight worker processes started twice (torch imported sixteen times)
@pytest.mark.parametrize("delay", [0.2, 2.0])
def test_ctrl_c_while_eight_workers_start_is_one_line(delay, tiny_root, tmp_path):
    """The workers import torch and unpickle their arguments for seconds after they are
    spawned; a Ctrl-C then used to print their tracebacks (UnpicklingError, a SemLock's
    FileNotFoundError, a failed import of the site module)."""
    if not POSTGRES:
        if os.environ.get("NAS_ASC_REQUIRE_POSTGRES"):
            pytest.fail("NAS_ASC_REQUIRE_POSTGRES is set but NAS_ASC_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL server (set NAS_ASC_TEST_POSTGRES; .ci/postgres.sh starts one)")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    study = f"startup-{uuid.uuid4().hex[:8]}"
    args = _search_args(space, tiny_root, POSTGRES, study, "--trials", "8", "--workers", "8")
    cmd = _Command(tmp_path, *args, "--no-warm-start")
    deadline = time.monotonic() + 300
    workers: list[int] = []
    while len(workers) < 8:  # spawned (the resource tracker may be a child too)
        assert cmd.proc.poll() is None and time.monotonic() < deadline, cmd.proc.stderr.read()
        workers = cmd.children()
        time.sleep(0.01)
    time.sleep(delay)
    cmd.ctrl_c()
    code, err = cmd.finish()
    _assert_one_interrupt_line(code, err)
    deadline = time.monotonic() + 10  # the resource tracker ends once it sees the parent gone
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)]  # every worker ended with it
    counts = trial_counts(optuna.load_study(study_name=study, storage=POSTGRES))
    assert counts.running == 0  # a trial a worker had begun was re-queued


_LATE = """
import atexit, sys, time
import nas_asc.cli as cli

command = cli._COMMANDS["complexity"]


def slow_exit(args):
    code = command(args)
    # an exit handler that takes a while, as a search's do (joining processes, closing pools)
    atexit.register(lambda: (print("exiting", flush=True), time.sleep(120)))
    return code


cli._COMMANDS["complexity"] = slow_exit
sys.exit(cli.main())
"""


@needs_linux
def test_an_interrupt_after_the_command_finished_is_one_line(tmp_path):
    """The command has printed its result; the process is ending (exit handlers, then Python's
    teardown, which resets the handlers and took seconds after a search): still one line."""
    program = tmp_path / "nas-asc"  # the console script's name: the program itself
    program.write_text(_LATE)
    proc = subprocess.Popen(
        [sys.executable, str(program), "complexity", "tfsepnet", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout.readline().startswith("{")  # the command's result
    assert proc.stdout.readline() == "exiting\n"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    _assert_one_interrupt_line(proc.returncode, err)


def test_silent_audio_is_one_line_without_a_progress_bar(tiny_root, tmp_path, monkeypatch, capsys):
    """Nothing about the features is drawn before the check that fails them."""
    import shutil

    import numpy as np
    import soundfile

    from nas_asc.cli import main

    root = tmp_path / "silent"
    shutil.copytree(tiny_root, root)
    for wav in (root / "audio").glob("*.wav"):
        info = soundfile.info(wav)
        soundfile.write(wav, np.zeros(info.frames, np.float32), info.samplerate, info.subtype)
    monkeypatch.chdir(tmp_path)
    code = main(["search", "--space", "tfsepnet", "--data", str(root), "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "nas-asc: error: training features have zero or non-finite variance; is the audio silent?"
    ], err


def test_the_cpu_compile_drops_torchs_cuda_notice_only(caplog):
    """On a machine with a CUDA toolkit but no GPU, importing ``torch.utils.cpp_extension`` (as
    inductor does to compile) logs that no CUDA runtime is found: benign for a CPU compile."""
    import torch

    from nas_asc.train import accel

    options = accel.AccelOptions(compile="on")
    session = accel.TrainingAccel(options, share=1, threads=1, channels_last=False, compile=True)
    session.forward(torch.nn.Linear(2, 2))  # wraps it for compilation (compiled on first call)
    logger = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local/cuda")
        logger.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
