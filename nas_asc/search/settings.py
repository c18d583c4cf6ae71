"""How a search runs: the study, its trial count, and the sampler and pruner it uses.

Settings hold instances, parsed once at the edge (the CLI): a :class:`SamplerFactory
<nas_asc.search.samplers.SamplerFactory>` and an :class:`EpochPruner
<nas_asc.search.pruning.EpochPruner>`, never spec strings that every module parses again.
Strings are still accepted for convenience and turned into instances here.

The machine limits are here too (:func:`max_threads`, :func:`max_workers`,
:data:`MAX_EVALUATE_SEEDS`): what one machine can hold, refused in one line before any work,
and named in ``--help``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nas_asc.device import check_device_spec, parse_gpus, worker_devices
from nas_asc.errors import NasAscError
from nas_asc.search.pruning import EpochPruner, create_pruner
from nas_asc.search.samplers import SamplerFactory, create_sampler

__all__ = [
    "MAX_EVALUATE_SEEDS",
    "THREADS_PER_CORE",
    "WORKERS_PER_CORE",
    "WORKER_PEAK_BYTES",
    "SearchSettings",
    "check_workers",
    "machine_cores",
    "machine_memory",
    "max_threads",
    "max_workers",
]

# ---------------------------------------------------------------------------------------------
# Machine limits
# ---------------------------------------------------------------------------------------------

#: torch threads per trial, at most this many per core. Threads beyond the cores only stall
#: each other at OpenMP barriers (2.5-7x slower, measured: nas_asc.train.accel); the margin
#: above 1 lets a smaller machine repeat a larger one's figures at its thread count (the count
#: sets the float rounding). Far beyond it OpenMP itself fails: libgomp gave up at 20,000
#: threads (leaving the trial RUNNING) and 100,000 crashed the process.
THREADS_PER_CORE = 4
#: worker processes, at most this many per core. On the CPU alone more workers than cores only
#: time-slice (slower, not broken); a worker training on a GPU leaves its core idle while it
#: waits for its kernels, and several share a GPU (--gpus), so a margin above 1 pays there.
WORKERS_PER_CORE = 4
#: peak memory of one search worker process: 10.1 GB measured for --workers 8 on 2 cores
#: (about 1.26 GB each: torch, the model, its batches, the mapped features), rounded up
WORKER_PEAK_BYTES = 1_300_000_000
#: retrainings per configuration in ``nas-asc evaluate``: each is a full training; the
#: standard error of the mean falls as 1/sqrt(K), so at 100 it is a tenth of one run's spread
#: (the default is 3). The cap catches a typo before it asks for years of training.
MAX_EVALUATE_SEEDS = 100


def machine_cores() -> int:
    """Logical CPUs this process may run on: the cores the default thread share divides
    (:func:`nas_asc.train.accel.cpu_cores`)."""
    from nas_asc.train.accel import cpu_cores

    return cpu_cores()


def machine_memory() -> int | None:
    """Bytes of memory this process's machine has: the physical memory, or its container's
    limit (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``) when lower; None if unknown.

    The total, not what is free now: a limit that moved with other processes' use would make
    the same command pass or fail by the load.
    """
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            sizes.append(int(text))
    sizes = [size for size in sizes if size > 0]
    return min(sizes) if sizes else None


def max_threads() -> int:
    """The most torch threads per trial: :data:`THREADS_PER_CORE` per core of this machine."""
    return THREADS_PER_CORE * machine_cores()


def max_workers() -> int:
    """The most worker processes this machine holds: :data:`WORKERS_PER_CORE` per core, and
    :data:`WORKER_PEAK_BYTES` of memory each (at least 1)."""
    limit = WORKERS_PER_CORE * machine_cores()
    memory = machine_memory()
    if memory is not None:
        limit = min(limit, memory // WORKER_PEAK_BYTES)
    return max(1, limit)


def _gb(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1e9:.1f} GB"


def check_workers(workers: int) -> None:
    """Refuse more worker processes on this machine than :func:`max_workers`, in one line."""
    limit = max_workers()
    if workers > limit:
        raise NasAscError(
            f"--workers {workers} is more than this machine holds: at most {limit} "
            f"({WORKERS_PER_CORE} per core on {machine_cores()} cores, "
            f"{WORKER_PEAK_BYTES / 1e9:.1f} GB each of {_gb(machine_memory())}); pass "
            f"--workers {limit} or fewer, or add machines (the same command with --storage "
            "postgresql://... on each, or --backend ray --ray-address)"
        )


@dataclass(frozen=True)
class SearchSettings:
    """The settings of one search run (the study and where it lives, and how trials run).

    ``sampler`` and ``pruner`` may be given as spec strings (``"tpe"``,
    ``"dominance:min_peers=5"``); they are stored as instances.
    """

    study_name: str
    storage: str
    n_trials: int  # trained candidates the study should reach (over-budget proposals and
    # retried crashes do not count)
    timeout: float | None = None  # stop starting trials after this many seconds
    seed: int = 0  # study seed; every trial's sampler and training seeds derive from it
    artifact_dir: str | None = None  # checkpoint/image artifact store; None: keep no artifacts
    sampler: SamplerFactory = field(default="tpe")  # type: ignore[assignment]
    pruner: EpochPruner = field(default="dominance")  # type: ignore[assignment]
    workers: int = 1  # trials that run at once (processes or Ray actors)
    heartbeat: int = 30  # seconds between a running trial's heartbeats; a trial silent for
    # HEARTBEAT_GRACE x heartbeat seconds belongs to a dead worker and is re-queued
    max_retry: int = 2  # times a trial of a dead worker is re-queued before it stays failed
    max_failures: int = 10  # failed trials in a row that stop the search
    max_rejections: int = 200  # over-budget proposals in a row that stop the search
    artifact_dir_explicit: bool = True  # False: artifact_dir is only the default folder, and a
    # study that records another one keeps it (workers started from other working folders)
    ram_objective: bool = False  # a fourth objective: peak activation RAM (minimized)
    warm_start: bool = True  # a new study first runs the space's reference configurations
    threads: int | None = None  # torch threads per trial; None: the trial's share of the cores
    adapt_threads: bool = False  # threads None: lower the share to the cores other processes
    # leave free, re-measured every epoch (faster on a busy machine; the float rounding of a
    # trial then depends on the load, so its figures repeat only at a fixed thread count)
    device: str = "auto"  # where trials train: auto | cpu | cuda | cuda:N (nas_asc.device)
    gpus: tuple[int, ...] | None = None  # GPUs the workers are placed over (None: all visible)
    compile: str = "off"  # torch.compile: off | on | auto (trials planned to see enough samples)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "sampler", create_sampler(self.sampler))
            object.__setattr__(self, "pruner", create_pruner(self.pruner))
        except ValueError as exc:
            raise NasAscError(str(exc)) from None
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise NasAscError(f"n_trials must be an integer >= 1, got {self.n_trials!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise NasAscError(f"threads must be None or an integer >= 1, got {self.threads!r}")
        if self.threads is not None and self.threads > max_threads():
            raise NasAscError(
                f"--threads {self.threads} is more than this machine runs: at most "
                f"{max_threads()} ({THREADS_PER_CORE} per core, {machine_cores()} cores); pass "
                f"--threads {max_threads()} or fewer, or leave --threads out for each trial's "
                "share of the cores"
            )
        if self.workers < 1:
            raise NasAscError(f"workers must be >= 1, got {self.workers}")
        if self.heartbeat < 1:
            raise NasAscError(f"heartbeat must be >= 1 second, got {self.heartbeat}")
        if self.max_failures < 1:
            raise NasAscError(f"max_failures must be >= 1, got {self.max_failures}")
        if self.max_rejections < 1:
            raise NasAscError(f"max_rejections must be >= 1, got {self.max_rejections}")
        check_device_spec(self.device)
        from nas_asc.train.accel import COMPILE_MODES

        if self.compile not in COMPILE_MODES:
            raise NasAscError(
                f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}"
            )
        if self.gpus is not None:
            object.__setattr__(self, "gpus", parse_gpus(",".join(map(str, self.gpus))))

    def worker_devices(self) -> list[str]:
        """The device of each worker process here (:func:`nas_asc.device.worker_devices`).

        Raises:
            NasAscError: more workers than :func:`max_workers`, CUDA asked for and missing, or
                ``gpus`` naming GPUs torch does not see.
        """
        check_workers(self.workers)
        return worker_devices(self.workers, self.device, self.gpus)

    def runtime(self, device: str = "cpu"):
        """The runtime of a worker training on ``device`` (one of :meth:`worker_devices`):
        threads, adaptation, device and compile, passed to its training explicitly."""
        from nas_asc.train.accel import AccelOptions

        return AccelOptions(
            threads=self.threads,
            adapt_threads=self.adapt_threads,
            device=device,
            compile=self.compile,
        )
