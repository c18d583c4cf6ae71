"""Errors for problems with user input.

Every message names the problem, the offending value and the fix. The CLI prints them as one line
and exits non-zero; library users catch them as ``ValueError``.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["NasAscError", "DatasetError", "SpaceError", "BudgetError", "sigterm_as_interrupt"]


class NasAscError(ValueError):
    """Base class for user-facing errors (bad input, missing data, bad configuration)."""


class DatasetError(NasAscError):
    """A dataset root, metadata file or audio file is missing or malformed."""


class SpaceError(NasAscError):
    """A search space YAML is malformed or names unknown dimensions."""


class BudgetError(NasAscError):
    """A budget specification is malformed (unknown preset, non-positive limit)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's stop) raises KeyboardInterrupt inside the block, as
    Ctrl-C does, so a search re-queues its running trial at once instead of leaving it to a stale
    heartbeat. Outside the main thread (an embedding application) the handler is left alone."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # signal handlers can only be set from the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
