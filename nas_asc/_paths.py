"""Output folders: refused before any work if they could not be created, created when needed."""

from __future__ import annotations

import os
from pathlib import Path

from nas_asc.errors import NasAscError

__all__ = ["check_creatable", "create_dir", "writable_dir"]


def check_creatable(path: str | Path, what: str, flag: str) -> None:
    """Refuse, before any work and creating nothing, a folder that could not be created later.

    The nearest existing ancestor of ``path`` must be a writable folder (root may write
    anywhere, but not below a regular file).
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise NasAscError(
            f"cannot create {what} folder {path}: {probe} is a file, not a folder; "
            f"choose another {flag}"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise NasAscError(
            f"cannot create {what} folder {path}: {probe} is not writable; choose another {flag}"
        )


def create_dir(path: str | Path, name: str, fix: str) -> Path:
    """Create the folder ``path`` (and parents); if that fails, one line:
    ``cannot create <name>: <reason>; <fix>``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NasAscError(f"cannot create {name}: {exc.strerror or exc}; {fix}") from None
    return path


def writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` (and parents) and check it is writable; one-line ``NasAscError`` if not."""
    path = create_dir(path, f"{what} folder {path}", "choose another")
    if not os.access(path, os.W_OK):
        raise NasAscError(f"{what} folder {path} is not writable; choose another")
    return path
