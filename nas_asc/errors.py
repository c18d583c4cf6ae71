"""Errors for problems with user input.

Every message names the problem, the offending value and the fix. The CLI prints them as one line
and exits non-zero; library users catch them as ``ValueError``.

An interrupt (Ctrl-C, SIGTERM) is one line too, and exit code 130, whenever it comes:
:func:`interrupts_once` turns the first into a KeyboardInterrupt and ignores the rest while the
command unwinds, and :class:`ProgramEnd` covers the ``nas-asc`` process after its command returned.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "NasAscError",
    "DatasetError",
    "SpaceError",
    "BudgetError",
    "ProgramEnd",
    "interrupts_once",
    "sigterm_as_interrupt",
]


class NasAscError(ValueError):
    """Base class for user-facing errors (bad input, missing data, bad configuration)."""


class DatasetError(NasAscError):
    """A dataset root, metadata file or audio file is missing or malformed."""


class SpaceError(NasAscError):
    """A search space YAML is malformed or names unknown dimensions."""


class BudgetError(NasAscError):
    """A budget specification is malformed (unknown preset, non-positive limit)."""


@contextlib.contextmanager
def interrupts_once() -> Iterator[None]:
    """Inside the block Ctrl-C (SIGINT) and SIGTERM (``kill``, a batch scheduler's stop) raise one
    KeyboardInterrupt, and every later one is ignored.

    The interrupt unwinds the command: a search re-queues its running trial at once (instead of
    leaving it to a stale heartbeat) and database connections are closed. A second Ctrl-C must
    not cut that short: raised inside a finalizer (SQLAlchemy's), it would print ``Exception
    ignored in ...``, and inside the re-queueing it would leave the trial ``RUNNING``. So once
    interrupted, the process ignores both signals for good (it is on its way out); a block left
    without an interrupt restores the previous handlers. Outside the main thread (an embedding
    application) the handlers are left alone.
    """

    def interrupt(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _ignore)
        raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # signal handlers can only be set from the main thread
        yield
        return
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is interrupt:  # not interrupted: as it was
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _ignore(signum, frame) -> None:
    """An interrupt after the first. A handler, not ``SIG_IGN``: a signal that arrived with the
    first one (Ctrl-C to the process group and the parent's SIGTERM) is dispatched after it, and
    Python reports one whose handler became ``SIG_IGN`` meanwhile ("Signal 15 ignored due to
    race condition")."""


#: The former name of :func:`interrupts_once` (which handled SIGTERM only).
sigterm_as_interrupt = interrupts_once


class ProgramEnd:
    """The end of the ``nas-asc`` process, where an interrupt is still one line and exit 130.

    Once the command has returned (:meth:`finished`), SIGINT or SIGTERM writes ``line`` and ends
    the process with exit code 130 at once: its results are saved, nothing is left to unwind.
    Python itself resets signal handlers before its final garbage collection, which takes
    seconds over a search's objects; an interrupt there would kill the process without a word.
    So the process ends as soon as the exit handlers (``atexit``: logging, multiprocessing, Ray)
    have run, with the command's exit code, and skips only that collection and module teardown.

    Create it before the command imports anything: its exit handler then runs after theirs. Only
    for the program itself (:meth:`of`), never for a caller of ``main()`` in its own process.
    """

    def __init__(self, line: str = "nas-asc: interrupted") -> None:
        self.line = line
        self.code: int | None = None
        atexit.register(self._exit)

    @classmethod
    def of(cls, argv: list[str]) -> ProgramEnd | None:
        """A ProgramEnd if this process is the ``nas-asc`` program run with ``argv`` (the
        console script, ``python -m nas_asc`` or ``python -m nas_asc.cli``), else None."""
        program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
        if program is None or list(argv) != sys.argv[1:]:
            return None
        package = Path(__file__).resolve().parent
        if program.stem == "nas-asc" or (
            program.name in ("__main__.py", "cli.py") and program.resolve().parent == package
        ):
            return cls()
        return None

    def finished(self, code: int) -> int:
        """The command returned ``code``: from now on an interrupt ends the process at once."""
        self.code = code
        with contextlib.suppress(ValueError):  # handlers can only be set from the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not _ignore:  # interrupted already: stays ignored
                    signal.signal(sig, self._interrupted)
        return code

    def _interrupted(self, signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # the stream may be mid-write in this thread
                stream.flush()
        os.write(2, f"{self.line}\n".encode())
        os._exit(130)

    def _exit(self) -> None:
        if self.code is None:  # the command never returned: Python's own exit
            return
        logging.shutdown()  # registered before this handler, so it would run after it
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(self.code)
