"""How a search runs: the study, its trial count, and the sampler and pruner it uses.

Settings hold instances, parsed once at the edge (the CLI): a :class:`SamplerFactory
<nas_asc.search.samplers.SamplerFactory>` and an :class:`EpochPruner
<nas_asc.search.pruning.EpochPruner>`, never spec strings that every module parses again.
Strings are still accepted for convenience and turned into instances here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nas_asc.device import check_device_spec, parse_gpus, worker_devices
from nas_asc.errors import NasAscError
from nas_asc.search.pruning import EpochPruner, create_pruner
from nas_asc.search.samplers import SamplerFactory, create_sampler

__all__ = ["SearchSettings"]


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
            NasAscError: CUDA asked for and missing, or ``gpus`` naming GPUs torch does not see.
        """
        return worker_devices(self.workers, self.device, self.gpus)

    def thread_options(self, device: str = "cpu"):
        """The training's thread and device options for the ``with`` block of a worker running
        trials on ``device`` (one of :meth:`worker_devices`)."""
        from nas_asc.train import accel

        return accel.using(
            threads=self.threads,
            adapt_threads=self.adapt_threads,
            device=device,
            compile=self.compile,
        )
