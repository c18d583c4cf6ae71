"""CPU speed for candidate training: threads, memory layout, fused AdamW, optional torch.compile.

The "trial speed" part of issue 5, following PyTorch's CPU performance-tuning guidance (thread
count per process, channels-last memory format for oneDNN convolutions, fused optimizers,
``torch.compile``) and keeping only what was measured to pay for nas-asc's candidates. Nothing
here changes what is computed beyond float rounding: thread counts and memory layouts change
reduction orders, and fused AdamW applies the same update in one kernel.

Measured on a 2-core Sapphire Rapids VM (torch 2.14 CPU, oneDNN 3.12), training steps (forward,
backward, AdamW) at batch 64 on 1x64x44 log-mels, samples/s, idle machine:

=================  ====  ====  =========  =========  ===============
model              1 T   2 T   1 T + CL   2 T + CL   2 T + CL + bf16
=================  ====  ====  =========  =========  ===============
tfsepnet C=24       172   278        190        229              183
tfsepnet C=40       103   169        122        158              150
bcresnet (c=40)     132   206        142        249              234
cpmobile            318   495        494        692              478
mobilenetv2_ca      216   359        340        466              258
=================  ====  ====  =========  =========  ===============

(T: intra-op threads, CL: channels-last.) What this module does with that:

* **Threads.** Two threads beat one by about 1.6x on an idle machine, but OpenMP's barriers make
  a process whose threads outnumber the free cores far slower: with one other busy process on
  the 2 cores, 2 threads ran 2.5-3x slower than 1 (tfsepnet C=24: 70 vs 188 samples/s); with
  two, 2.2x; among other agents' jobs (load average 6) 5-7x (tfsepnet C=40: 8 vs 54).
  ``OMP_WAIT_POLICY=PASSIVE`` removes most of that penalty but made idle 2-thread training
  2.5-3x slower, so it is not used. Hence :func:`configure_threads` gives each of N parallel
  trials ``cores // N`` threads (the search backends call it with their worker count). With
  ``adapt_threads`` a training session also lowers that to what other processes leave free,
  measured from ``/proc/stat`` before training and after every epoch; that is off by default,
  because the thread count changes how weight gradients are summed, and a trial must give the
  same figures whatever else the machine is doing.
* **Channels-last** pays for some families and costs for others (cpmobile and mobilenetv2_ca
  1.4-1.6x, tfsepnet 0.8-1.2x, and which way depends on the thread count). With
  ``channels_last=None`` a session times a few steps in both layouts on the candidate itself
  and keeps the faster, when the training is long enough for that to pay; off by default for
  the same reason (a timing decides the layout, the layout the rounding).
* **Fused AdamW** (``fused=True``, one kernel per step instead of a dozen ops per tensor):
  +10-15% samples/s on tfsepnet C=24 and cpmobile.
* **torch.compile** (inductor, needs a C++ compiler) reached 1.33x on tfsepnet C=40 at 2 threads
  after 167 s of compiling (12 min on the loaded machine), and every candidate of a search is a
  new graph (a warm cache hit took 7 s, but another width recompiled for 187 s): it repays its
  cost only after about 110,000 training samples, ten times a default trial. It is off unless
  asked for ("on", or "auto" above ``compile_min_samples``) and falls back to eager, with a
  warning and a note in :meth:`TrainingAccel.summary`, when no C++ compiler is found or
  compilation fails.
* Not used, measured: bf16 autocast (AMX present) was slower, 0.55-1.0x, because casts around
  the small convolutions cost more than the convolutions save (so its int8 accuracy was not
  pursued); ``torch.set_flush_denormal(True)`` made no difference beyond noise; AdamW
  ``foreach`` made none either; disabling oneDNN (``torch.backends.mkldnn``) was 2.5-8x slower.
  Folding BatchNorm into convolutions does not apply to training: in train mode BatchNorm
  normalizes with the batch's statistics, which a folded weight cannot express.

Most of a step is memory-bound BatchNorm, normalization and element-wise work on the early,
large feature maps (convolutions are about a third of it), which is why only fusion (compile)
gives more than these settings, at a compile cost a short trial does not repay.

Example::

    from nas_asc.train import accel

    accel.configure_threads(parallel_trials=1)
    session = accel.prepare_for_training(model, train_x[:64], planned_samples=n * epochs)
    opt = accel.make_adamw(model.parameters(), lr=1e-2, weight_decay=1e-4)
    forward = session.forward(model)
    for x, y in batches:
        loss = F.cross_entropy(forward(session.input(x)), y)
        ...
    session.finish(model)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "COMPILE_MODES",
    "AccelOptions",
    "TrainingAccel",
    "compiler_path",
    "configure_threads",
    "cpu_cores",
    "make_adamw",
    "prepare_for_training",
    "threads_per_trial",
]

_LOG = logging.getLogger(__name__)

# "off": eager; "on": compile every session; "auto": compile when the planned training samples
# reach AccelOptions.compile_min_samples
COMPILE_MODES = ("off", "on", "auto")


@dataclass(frozen=True)
class AccelOptions:
    """Where and how one training runs: device, threads, memory layout, optimizer and compile.

    The runtime object of a command or a worker: built once from the command line (``--device``,
    ``--threads``, ``--compile``, :meth:`nas_asc.search.settings.SearchSettings.runtime`) and
    passed down explicitly (``train(..., runtime=...)``, ``get_teacher(..., runtime=...)``);
    nothing in nas-asc keeps one as module state.
    """

    threads: int | None = None  # intra-op threads; None: the trial's share (configure_threads)
    adapt_threads: bool = False  # threads None: lower the share to the cores other processes
    # leave free, re-measured every epoch (faster on a busy machine, but the thread count, and
    # with it the float rounding of the weight gradients, then depends on the load)
    channels_last: bool | None = False  # None: time both layouts on the model, keep the faster
    # (the choice, and with it the float rounding, then depends on the timing)
    fused_optimizer: bool = True  # make_adamw: AdamW(fused=True), one kernel per step
    compile: str = "off"  # off | on | auto (on from compile_min_samples planned samples)
    compile_mode: str | None = None  # torch.compile mode; None is inductor's default
    compile_min_samples: int = 110_000  # auto: training samples that repay a ~3 min compile
    cxx: str | None = None  # C++ compiler inductor needs; None: $CXX, else g++
    probe_steps: int = 2  # timed forward+backward steps per layout when choosing one
    probe_min_samples: int = 4_000  # choose the layout by timing only from this many samples
    load_window: float = 0.1  # s of /proc/stat sampling before a first run (0: no load check)
    device: str = "cpu"  # where training runs: cpu, cuda, cuda:N or auto (nas_asc.device)

    def __post_init__(self) -> None:
        from nas_asc.device import check_device_spec

        check_device_spec(self.device)
        checks = [
            (
                self.threads is None or (_is_int(self.threads) and self.threads >= 1),
                "threads",
                "None or an integer >= 1",
            ),
            (self.channels_last in (None, True, False), "channels_last", "None, True or False"),
            (self.compile in COMPILE_MODES, "compile", f"one of {', '.join(COMPILE_MODES)}"),
            (
                _is_int(self.compile_min_samples) and self.compile_min_samples >= 0,
                "compile_min_samples",
                "an integer >= 0",
            ),
            (_is_int(self.probe_steps) and self.probe_steps >= 1, "probe_steps", "an integer >= 1"),
            (
                _is_int(self.probe_min_samples) and self.probe_min_samples >= 0,
                "probe_min_samples",
                "an integer >= 0",
            ),
            (self.load_window >= 0, "load_window", ">= 0 seconds"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(
                    f"accel options: {name} must be {rule}, got {name}={getattr(self, name)!r}"
                )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_share: int | None = None  # threads per trial set by configure_threads; None: not configured
_since_finish: _LoadMeter | None = None  # others' load since the last session finished


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_trial(parallel_trials: int = 1, cores: int | None = None) -> int:
    """``max(1, cores // parallel_trials)``: each of N concurrent trials gets its share.

    Args:
        parallel_trials: trials training at the same time on this machine.
        cores: cores to share; None: :func:`cpu_cores`.
    """
    if not _is_int(parallel_trials) or parallel_trials < 1:
        raise ValueError(
            f"parallel_trials must be an integer >= 1, got {parallel_trials!r}; pass the number "
            "of trials that train at the same time on this machine"
        )
    if cores is None:
        cores = cpu_cores()
    if not _is_int(cores) or cores < 1:
        raise ValueError(f"cores must be an integer >= 1, got {cores!r}")
    return max(1, cores // parallel_trials)


def configure_threads(parallel_trials: int = 1, cores: int | None = None) -> int:
    """Set this process's torch threads for one of ``parallel_trials`` concurrent trials.

    Intra-op threads become :func:`threads_per_trial`; a training session may lower them while
    other processes keep cores busy (see the module docstring for the measured penalty of
    oversubscription). Inter-op threads are set to the same number when torch still allows it
    (only before its first inter-op work); the trainer runs no inter-op parallel work, so when it
    no longer allows it nothing is lost.

    Returns:
        The intra-op thread count.
    """
    global _share
    threads = threads_per_trial(parallel_trials, cores)
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        with contextlib.suppress(RuntimeError):  # torch refuses once inter-op work has started
            torch.set_num_interop_threads(threads)
    _share = threads
    return threads


class _LoadMeter:
    """CPU time that other processes use on this process's cores (Linux ``/proc/stat``)."""

    def __init__(self) -> None:
        self.cpus = {f"cpu{c}" for c in os.sched_getaffinity(0)} if _has_proc_stat() else set()
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        if not self.cpus:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name in self.cpus:
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
                busy += user + nice + system + irq + softirq + steal
        own = os.times()
        return busy / ticks, own.user + own.system, time.perf_counter()

    def seconds(self) -> float:
        """Seconds since the last reading."""
        return time.perf_counter() - self._last[2] if self._last is not None else 0.0

    def others_busy(self) -> float | None:
        """Cores the other processes kept busy, on average, since the last call."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[2] - last[2] <= 0:
            return None
        others = (now[0] - last[0]) - (now[1] - last[1])
        return max(0.0, others / (now[2] - last[2]))


def _has_proc_stat() -> bool:
    return hasattr(os, "sched_getaffinity") and Path("/proc/stat").is_file()


def _threads_for(cap: int, others: float | None) -> int:
    # a thread that finds no free core stalls every OpenMP barrier, so only free cores count
    if others is None:
        return cap
    return max(1, min(cap, int(cpu_cores() - others + 0.5)))


def compiler_path(cxx: str | None = None) -> str | None:
    """Path of the C++ compiler torch.compile's inductor would use, or None if there is none.

    Args:
        cxx: compiler name or path; None: ``$CXX``, else ``g++`` (inductor's default).
    """
    return shutil.which(cxx or os.environ.get("CXX") or "g++")


def make_adamw(
    params: Iterable, lr: float, weight_decay: float, fused: bool = True
) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step unless ``fused`` is False
    (:attr:`AccelOptions.fused_optimizer` in training).

    The update is AdamW's either way; fusing only removes per-tensor op overhead.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=bool(fused))


class _NoCudaNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." warning.

    ``torch.utils.cpp_extension`` logs it when it is imported (inductor imports it to compile)
    on a machine that has a CUDA toolkit (``nvcc`` on PATH) but no GPU. The compile here is for
    the CPU, which needs no CUDA runtime: the notice is benign, and it is emitted at import
    whatever nas-asc does, so it is filtered, this one message only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found")


def _quiet_cpu_compile() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaNotice) for f in logger.filters):
        logger.addFilter(_NoCudaNotice())


class _CompiledForward:
    """A compiled module's call that falls back to eager if compilation fails on first use."""

    def __init__(self, net: nn.Module, session: TrainingAccel) -> None:
        _quiet_cpu_compile()
        self.net = net
        self.session = session
        self.compiled = torch.compile(net, mode=session.options.compile_mode)
        self.ready = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.session.compile_failed:
            return self.net(x)
        if self.ready:
            return self.compiled(x)
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor import config as inductor_config
        from torch._inductor.exc import CppCompileError

        cxx = compiler_path(self.session.options.cxx)
        try:
            # compilation happens on this first call, with the compiler found for this session
            with inductor_config.patch({"cpp.cxx": (None, cxx)}):
                out = self.compiled(x)
        except (TorchDynamoException, CppCompileError) as exc:
            reason = f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            self.session._compile_fallback(reason)
            return self.net(x)
        self.ready = True
        return out


@dataclass
class TrainingAccel:
    """The speed settings of one training run, chosen by :func:`prepare_for_training`.

    The loop converts every batch with :meth:`input`, applies the layout to any other network it
    trains (:meth:`adopt`), calls networks through :meth:`forward`, calls :meth:`epoch_end`
    after each epoch and :meth:`finish` at the end.
    """

    options: AccelOptions
    share: int  # threads this trial may use (configure_threads)
    threads: int  # threads now in use
    channels_last: bool  # train in channels-last memory format
    compile: bool  # compile networks with torch.compile
    probe: dict[str, float] = field(default_factory=dict)  # seconds per step of each layout
    notes: list[str] = field(default_factory=list)  # why each choice was made
    thread_history: list[int] = field(default_factory=list)  # threads per epoch
    compile_failed: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _meter: _LoadMeter | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the session's memory format (4-D batches; others pass unchanged)."""
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def adopt(self, net: nn.Module) -> nn.Module:
        """Put ``net``'s parameters on the session's device and in its layout, in place (before
        its optimizer is built)."""
        net.to(self.device)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        return net

    def forward(self, net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """What to call instead of ``net``: itself, or a compiled view sharing its weights."""
        return _CompiledForward(net, self) if self.compile and not self.compile_failed else net

    def epoch_end(self) -> int:
        """Re-choose the thread count from the others' load during the epoch; returns it."""
        if self._meter is not None and self.options.threads is None and self.options.adapt_threads:
            threads = _threads_for(self.share, self._meter.others_busy())
            if threads != self.threads:
                torch.set_num_threads(threads)
                self.threads = threads
        self.thread_history.append(self.threads)
        return self.threads

    def finish(self, *nets: nn.Module) -> None:
        """Give ``nets`` contiguous weights again and restore the trial's thread count (with
        ``adapt_threads``, keep the count the load allows: the int8 measurement that follows
        runs under the same load)."""
        global _since_finish
        if self._meter is not None:
            self._meter.others_busy()  # the next session reads the load from here on
            _since_finish = self._meter
        for net in nets:
            if net is not None and self.channels_last:
                net.to(memory_format=torch.contiguous_format)
            if net is not None:
                net.to("cpu")  # int8 conversion and evaluation run on the CPU
        adapting = self._meter is not None and self.options.threads is None
        torch.set_num_threads(self.threads if adapting else self.share)

    def summary(self) -> dict:
        """JSON-friendly record of the choices (for trial user attributes)."""
        return {
            "device": str(self.device),
            "threads": self.thread_history or [self.threads],
            "share": self.share,  # the trial's share of the cores, before any load adaptation
            "channels_last": self.channels_last,
            "fused_optimizer": self.options.fused_optimizer,
            "compiled": self.compile and not self.compile_failed,
            "probe_seconds_per_step": dict(self.probe),
            "notes": list(self.notes),
        }

    def _compile_fallback(self, reason: str) -> None:
        self.compile_failed = True
        self.notes.append(f"{reason}; trained eager")
        _LOG.warning("%s; training eager instead", reason)


def _probe_layouts(model: nn.Module, example: torch.Tensor, steps: int) -> dict[str, float]:
    """Fastest forward+backward step (s) of each layout, timed alternately on copies of ``model``.

    The fastest of a few steps is the one least disturbed by other processes.
    """
    nets, inputs = {}, {}
    cuda = example.device.type == "cuda"
    for name, fmt in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        nets[name] = copy.deepcopy(model).to(example.device, memory_format=fmt).train()
        inputs[name] = example.contiguous(memory_format=fmt)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for rep in range(steps + 1):  # the first round warms the kernels and is not timed
        for name, net in nets.items():
            start = time.perf_counter()
            net(inputs[name]).float().sum().backward()
            if cuda:
                torch.cuda.synchronize(example.device)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def prepare_for_training(
    model: nn.Module,
    example: torch.Tensor,
    planned_samples: int | None = None,
    options: AccelOptions | None = None,
) -> TrainingAccel:
    """Choose threads, layout and compilation for training ``model``, and apply the layout.

    Threads: ``options.threads``, else the trial's share (:func:`configure_threads`, or the
    current torch setting), lowered to the cores other processes leave free only with
    ``adapt_threads``. Layout: contiguous by default, ``channels_last`` if forced, or with
    ``channels_last=None`` the faster of the two in a few timed forward+backward steps on copies
    of the model (run only when ``planned_samples`` reaches ``probe_min_samples``; shorter runs stay
    contiguous). Compilation: per ``options.compile``, only if a C++ compiler is found.

    ``model`` gets the chosen layout in place, so build its optimizer afterwards; the global
    random state and ``model``'s buffers are left as they were.

    Args:
        model: the network to train.
        example: one training batch ``(batch, channels, freq, time)``, for the layout probe.
        planned_samples: training samples the run will see (epochs x clips), or None if unknown.
        options: where and how to train (device, threads, layout, compile); None: the
            defaults (:class:`AccelOptions`: the CPU, the trial's thread share, eager).

    Returns:
        The session the training loop uses (see :class:`TrainingAccel`).
    """
    from nas_asc.device import resolve_device

    opts = options if options is not None else AccelOptions()
    device = resolve_device(opts.device)
    notes = []
    share = _share or torch.get_num_threads()
    meter = None
    if opts.threads is None and opts.adapt_threads and opts.load_window > 0:
        # the load since the previous run finished, else a short sample now
        meter = _since_finish if _since_finish is not None else _LoadMeter()
    if opts.threads is not None:
        threads = opts.threads
        notes.append(f"threads fixed at {threads}")
    elif meter is not None and meter.cpus:
        if meter.seconds() < opts.load_window:
            time.sleep(opts.load_window - meter.seconds())
        others = meter.others_busy()
        threads = _threads_for(share, others)
        notes.append(f"threads {threads} of {share} (other processes busy on {others:.1f} cores)")
    else:
        threads = share
    torch.set_num_threads(threads)

    channels_last = bool(opts.channels_last)
    probe: dict[str, float] = {}
    if opts.channels_last is None:
        if planned_samples is not None and planned_samples >= opts.probe_min_samples:
            with torch.random.fork_rng(devices=[]):
                probe = _probe_layouts(model, example.to(device), opts.probe_steps)
            channels_last = probe["channels_last"] < probe["contiguous"]
            notes.append(
                "layout by timing: "
                + ", ".join(f"{k} {v * 1e3:.0f} ms/step" for k, v in probe.items())
            )
        else:
            notes.append(
                f"contiguous layout: {planned_samples} planned samples do not repay timing both "
                f"layouts (from {opts.probe_min_samples})"
            )

    compile_on = opts.compile == "on" or (
        opts.compile == "auto"
        and planned_samples is not None
        and planned_samples >= opts.compile_min_samples
    )
    if compile_on and compiler_path(opts.cxx) is None:
        name = opts.cxx or os.environ.get("CXX") or "g++"
        notes.append(f"torch.compile skipped: no C++ compiler {name!r} on PATH; trained eager")
        _LOG.warning("torch.compile needs a C++ compiler (%s not on PATH); training eager", name)
        compile_on = False

    session = TrainingAccel(
        options=opts,
        share=share,
        threads=threads,
        channels_last=channels_last,
        compile=compile_on,
        probe=probe,
        notes=notes,
        device=device,
        _meter=meter if (meter is not None and meter.cpus) else None,
    )
    session.adopt(model)
    if session._meter is not None:
        session._meter.others_busy()  # start the first epoch's window now
    return session
