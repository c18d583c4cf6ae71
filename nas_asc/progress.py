"""Progress of a search: one reporter that the objective, both backends, the CLI and tests use.

A :class:`Reporter` receives events (a search started, an epoch ended, a trial finished, a
message); the base class ignores them all. :class:`ConsoleReporter` is what the CLI shows: a
line per finished trial with its searched dimensions, ``k/N``, the elapsed time and an ETA, and
per-epoch progress of the running trial (rewritten in place on a terminal, a line per epoch
elsewhere). Inside a long epoch (real-size data: thousands of steps) the steps done and the
epoch's ETA are shown too: on a terminal in the live line, elsewhere a line every
``step_interval`` seconds, so epochs shorter than that add nothing. :class:`RecordingReporter`
keeps the events, for tests and programs.

Reporters travel with the :class:`~nas_asc.search.objective.SearchContext` to worker processes
and Ray actors (they are pickled), so a console reporter prints from wherever a trial runs and
its ETA counts from the moment the search started (wall-clock time, the same on every worker).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "ConsoleReporter",
    "RecordingReporter",
    "Reporter",
    "TrialReport",
    "format_bytes",
    "format_duration",
    "format_macs",
    "format_params",
    "reporter_for",
]


@dataclass(frozen=True)
class TrialReport:
    """A finished trial, as reported.

    Attributes:
        number: the Optuna trial number.
        state: ``trained``, ``infeasible``, ``pruned`` or ``failed``.
        params: the searched dimensions' values (dotted names), nothing fixed.
        summary: the outcome in words (accuracy and complexity, or the reason).
        done: trials of the study that count towards ``--trials``, this one included (a
            rejected over-budget proposal does not count); -1 when it could not be read.
    """

    number: int
    state: str
    params: dict[str, Any]
    summary: str
    done: int


class Reporter:
    """Receives a search's progress; every method may be overridden, none must be."""

    def search_started(self, total: int, done: int) -> None:
        """The search (this run of it) starts with ``done`` of ``total`` trials finished."""

    def epoch(self, number: int | str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        """Trial ``number`` (or what a text names, e.g. a teacher member) finished ``epoch``
        (1-based) of ``epochs``; ``metrics`` by name."""

    def step(self, number: int | str, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Trial ``number`` (or a teacher member) finished optimizer ``step`` of ``steps`` in
        ``epoch`` of ``epochs`` (all 1-based). Called after every step: keep it cheap."""

    def trial_finished(self, report: TrialReport) -> None:
        """A trial ended (trained, over budget, stopped early or failed)."""

    def message(self, text: str) -> None:
        """Anything else worth a line (a re-queued trial, where checkpoints go)."""


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_macs(value: Any) -> str:
    """MACs with an SI prefix, e.g. ``10.22 M``; ``-`` when missing (the unit of every table)."""
    if _missing(value):
        return "-"
    value = float(value)
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}"
    return f"{value:.0f}"


def format_bytes(value: Any) -> str:
    """Bytes with a decimal prefix, e.g. ``57.5 kB`` (1 kB = 1,000 bytes, as the budget's
    128,000 B); ``-`` when missing."""
    if _missing(value):
        return "-"
    value = float(value)
    for scale, prefix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {prefix}"
    return f"{value:.0f} B"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """Searched values, compactly: ``width=40 n_mels=128 lr=0.0032``.

    The section prefix (``model.``, ``frontend.``, ``train.``) is dropped unless two dimensions
    would then share a name.
    """
    short = [name.rpartition(".")[2] for name in params]
    names = [s if short.count(s) == 1 else full for s, full in zip(short, params, strict=True)]
    return " ".join(f"{n}={_value(v)}" for n, v in zip(names, params.values(), strict=True))


@dataclass
class ConsoleReporter(Reporter):
    """Progress lines on a stream (stdout by default).

    Args:
        total: the trial count the study should reach (``--trials``), for ``k/N`` and the ETA.
        live: rewrite the running trial's epoch line in place; None: when the stream is a
            terminal. Without it, each epoch is a line of its own.
        epochs: show per-epoch progress at all.
        step_interval: seconds between step lines inside an epoch when not live (on a terminal
            the live line is rewritten at most once a second).
    """

    total: int | None = None
    live: bool | None = None
    epochs: bool = True
    stream: TextIO | None = field(default=None, repr=False)
    step_interval: float = 60.0
    clock: Any = field(default=time.monotonic, repr=False)  # seconds (tests pass their own)
    _epoch_started: dict = field(default_factory=dict, repr=False)  # who -> (epoch, start)
    _last_step_line: float = 0.0
    _started: float | None = None
    _done_at_start: int = 0
    _pending: bool = False  # a live line is on screen, not yet ended by a newline
    _trained: int = 0  # trials that took time (not over budget) finished in this run

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["stream"] = None  # workers print to their own stdout
        state["_pending"] = False
        return state

    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _is_live(self) -> bool:
        if self.live is not None:
            return self.live
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _line(self, text: str) -> None:
        out = self._out()
        if self._pending:
            out.write("\r\033[K")
            self._pending = False
        out.write(text + "\n")
        out.flush()

    def search_started(self, total: int, done: int) -> None:
        self.total = total
        self._started = time.time()
        self._done_at_start = done

    def epoch(self, number: int | str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        if not self.epochs:
            return
        who = f"trial {number}" if isinstance(number, int) else number
        parts = [f"{who}: epoch {epoch}/{epochs}"]
        for name, value in metrics.items():
            parts.append(f"{name} {value:.1%}" if "accuracy" in name else f"{name} {value:.3f}")
        self._progress("  " + ", ".join(parts), self._is_live())

    def step(self, number: int | str, epoch: int, epochs: int, step: int, steps: int) -> None:
        if not self.epochs:
            return
        now = self.clock()
        who = f"trial {number}" if isinstance(number, int) else number
        known = self._epoch_started.get(who)
        if known is None or known[0] != epoch or step == 1:
            self._epoch_started[who] = (epoch, now)  # timed from the end of its first step
            self._last_step_line = now
            return
        live = self._is_live()
        if now - self._last_step_line < (1.0 if live else self.step_interval):
            return
        self._last_step_line = now
        eta = (now - known[1]) / (step - 1) * (steps - step)
        text = (
            f"  {who}: epoch {epoch}/{epochs}, step {step}/{steps} ({step / steps:.0%}), "
            f"epoch ETA {format_duration(eta)}"
        )
        self._progress(text, live)

    def _progress(self, text: str, live: bool) -> None:
        """A progress line: rewritten in place when ``live``, else a line of its own."""
        if not live:
            self._line(text)
            return
        out = self._out()
        out.write("\r\033[K" + text)
        out.flush()
        self._pending = True

    def trial_finished(self, report: TrialReport) -> None:
        where = ""
        if self.total and report.done >= 0:  # -1: the count could not be read
            where = f" [{report.done}/{self.total}]"  # as it is: more than asked shows as such
        timing = ""
        if self._started is not None:
            elapsed = time.time() - self._started
            timing = f"; {format_duration(elapsed)} elapsed"
            finished_here = report.done - self._done_at_start
            # an over-budget proposal takes no time: no rate to extrapolate before one trained;
            # nor from the first trained trial alone (a new study's first is the smallest of
            # the space's references), so the ETA starts at the second
            self._trained += report.state != "infeasible"
            left = self.total - report.done if self.total else 0
            if self._trained >= 2 and finished_here > 0 and left > 0:
                eta = elapsed / finished_here * left
                timing += (
                    f", ETA {format_duration(eta)} for the {left} trial{'s' * (left > 1)} left "
                    "(then the front's test-fold measurement)"
                )
        params = format_params(report.params)
        self._line(f"trial {report.number}{where}: {params} -> {report.summary}{timing}")

    def message(self, text: str) -> None:
        self._line(text)


def reporter_for(progress: bool | Reporter | None) -> Reporter:
    """The channel a stage's progress lines go through: a given :class:`Reporter`, the console
    (:class:`ConsoleReporter`, standard output) for True, a silent one for False or None.

    Every stage (search, test-fold measurement, evaluate, fine-tune, export) speaks through a
    reporter; only the CLI prints directly.
    """
    if isinstance(progress, Reporter):
        return progress
    return ConsoleReporter() if progress else Reporter()


@dataclass
class RecordingReporter(Reporter):
    """Keeps every event in :attr:`events` as ``(kind, payload)`` (for tests and programs)."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def search_started(self, total: int, done: int) -> None:
        self.events.append(("search_started", {"total": total, "done": done}))

    def epoch(self, number: int | str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        self.events.append(("epoch", {"number": number, "epoch": epoch, "epochs": epochs}))

    def step(self, number: int | str, epoch: int, epochs: int, step: int, steps: int) -> None:
        self.events.append(
            ("step", {"number": number, "epoch": epoch, "step": step, "steps": steps})
        )

    def trial_finished(self, report: TrialReport) -> None:
        self.events.append(("trial_finished", report))

    def message(self, text: str) -> None:
        self.events.append(("message", text))

    def trials(self) -> list[TrialReport]:
        """The finished trials, in the order they were reported."""
        return [payload for kind, payload in self.events if kind == "trial_finished"]
