"""Shared fixtures: an isolated cache root and one tiny synthetic TAU22 dataset per session; the
fast suite's split over the cores (pytest-xdist, one pinned worker per core, a test file per
worker at a time so that module fixtures are built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY = dict(
    cities=("lisbon", "paris"),
    train_locations=1,
    eval_locations=1,
    train_segments=1,
    eval_segments=1,
    train_clips_per_segment=4,
    eval_clips_per_segment=1,
)


MAX_WORKERS = 8  # each worker imports torch (about 0.5 GB); beyond this, memory, not cores, binds


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per core this process may run on, up to
    :data:`MAX_WORKERS`, for the fast suite only. A selection that includes slow tests runs in
    one process: those end-to-end tests start worker processes of their own and time them out."""
    markexpr = config.getoption("markexpr", "") or ""
    if "not slow" not in markexpr:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


#: the test files that took longest when last measured (8-22 core-seconds each on a 2-core
#: AMD EPYC with AVX-512, 2026-12-08; about twice that on one without), longest first.
#: pytest-xdist hands out files by their number of tests, which leaves a long file of few tests
#: (the holdout search) for the end, one worker busy and the other idle; these are handed out
#: first instead, and the short files fill in behind them.
LONGEST_FIRST = (
    "test_conformance.py",
    "test_holdout.py",
    "test_finetune.py",
    "test_tflite.py",
    "test_faults.py",
    "test_samplers.py",
    "test_data_synth.py",
    "test_bad_input.py",
    "test_dcase2025.py",
    "test_export.py",
    "test_dashboard.py",
    "test_train_recipes.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with :data:`LONGEST_FIRST` handed out before the other files."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    def rank(scope: str) -> int:
        name = Path(scope).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            # the pending file of lowest rank (ties keep pytest-xdist's order) goes next
            self.workqueue.move_to_end(min(self.workqueue, key=rank), last=False)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def pytest_configure(config) -> None:
    """Under pytest-xdist, pin each worker to its own share of the cores.

    Torch threads that outnumber free cores stall each other at every barrier; pinned, each
    worker (and every process it starts) sees only its cores, so nas-asc's thread share
    (``accel.cpu_cores``) gives each worker's training exactly the cores it has.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index = int(worker.removeprefix("gw"))
    mine = cores[index::count] if len(cores) >= count else cores
    os.sched_setaffinity(0, mine or cores)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Path:
    """Point $NAS_ASC_CACHE at a per-session folder unless the caller chose one (CI does)."""
    if os.environ.get("NAS_ASC_CACHE"):
        return Path(os.environ["NAS_ASC_CACHE"])
    root = tmp_path_factory.mktemp("nas-asc-cache")
    os.environ["NAS_ASC_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the TAU22 layout (about 100 train and 180 evaluate clips)."""
    from nas_asc.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", SynthConfig(**TINY), progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_root):
    from nas_asc.data.tau22 import load_tau22

    return load_tau22(tiny_root)


@pytest.fixture(scope="session")
def tiny_protocol(tiny_dataset):
    """The tiny dataset's default protocol: a validation split of its training locations."""
    from nas_asc.data.protocol import ValidationSpec, make_protocol

    return make_protocol(tiny_dataset, ValidationSpec())


@pytest.fixture(scope="session")
def tiny_search(tiny_protocol):
    """What a search on the tiny dataset sees: training part and validation split, no test."""
    return tiny_protocol.search_view()
