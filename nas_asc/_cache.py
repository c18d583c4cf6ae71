"""One cache root for everything nas-asc computes once (synthetic data, features, teacher logits).

The root is ``$NAS_ASC_CACHE`` or the platform cache directory (``~/.cache/nas-asc`` on Linux).
Entries are keyed by content hashes and written atomically: a writer fills a temporary sibling and
renames it into place, so a crash never leaves a half-written entry behind.

Entries are also verified on load, because a cache outlives the process that wrote it (a disk
that fills up, a copy interrupted by hand, a bit flipped in storage): a corrupt entry must never
crash a search or, worse, feed it wrong data. :func:`save_torch` writes a SHA-256 checksum file
(``<entry>.sha256``, in ``sha256sum`` format) *before* renaming the entry into place, so an entry
that exists always has its checksum; :func:`load_torch` checks it and, on a mismatch, a
truncation or a missing checksum, deletes the entry with a one-line warning and returns ``None``
so that the caller recomputes it. Folder entries (the synthetic dataset) carry a manifest of
every file's size and SHA-256 (:func:`write_manifest`, :func:`check_manifest`).

Large arrays (the log-mel features) are stored as ``.npy`` files that readers memory-map instead
of loading (:func:`atomic_array`, :func:`load_array`): the processes of one machine then share one
copy of the data through the page cache. They carry the same ``<entry>.sha256`` checksum, written
before the rename and verified on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nas_asc._paths import create_dir
from nas_asc.errors import NasAscError

__all__ = [
    "cache_root",
    "content_key",
    "atomic_dir",
    "atomic_file",
    "atomic_array",
    "load_array",
    "recorded_checksum",
    "save_torch",
    "torch_save",
    "load_torch",
    "discard",
    "write_manifest",
    "check_manifest",
    "file_digests",
    "DIGESTS",
    "MANIFEST",
]

_LOG = logging.getLogger(__name__)

#: File name of a folder entry's manifest (relative path, size, SHA-256 of every other file).
MANIFEST = "manifest.sha256"
_CHUNK = 1 << 20  # bytes read at a time while hashing


def cache_root() -> Path:
    """Return the cache root, creating it if needed.

    Raises:
        NasAscError: the root is a file, or cannot be created (one line naming it).
    """
    env = os.environ.get("NAS_ASC_CACHE")
    if env:
        root = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "nas-asc"
    where = f"$NAS_ASC_CACHE={env}" if env else f"the cache folder {root}"
    if root.exists() and not root.is_dir():
        raise NasAscError(f"{where} is a file, not a folder; point NAS_ASC_CACHE at a folder")
    return create_dir(root, where, "point NAS_ASC_CACHE at a writable folder")


def content_key(*parts: Any, length: int = 16) -> str:
    """Stable hex digest of JSON-serialisable parts (dataclasses must be converted first)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # another process finished first; keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``final`` for writing; rename it into place on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


#: Folder of the per-dataset indexes of file digests (:func:`file_digests`).
DIGESTS = "file-digests"


def file_digests(root: Path, names: list[str]) -> list[str]:
    """``"<size>:<SHA-256 prefix>"`` of each file ``root/name``, or ``"-1"`` for one that is
    missing, for cache keys that follow the files' contents.

    Keys of names and sizes alone would keep feeding a search the features and teacher of audio
    that was since replaced by other audio of the same size. Hashing every clip on every run
    costs a pass over the dataset (about 30 GB for TAU22), so each digest is computed once and
    kept in an index under the cache root (one JSON file per dataset root, written atomically),
    keyed by the file's name, size and modification time in nanoseconds: a file that changes
    gets a new modification time (``cp``, an extraction, a rewrite) and is hashed again.
    """
    root = Path(root).resolve()
    index_path = cache_root() / DIGESTS / f"{content_key(str(root))}.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}  # none yet, or unreadable: rebuilt from the files
    digests, changed = [], False
    for name in names:
        try:
            st = (root / name).stat()
        except OSError:
            digests.append("-1")
            continue
        stamp = [st.st_size, st.st_mtime_ns]
        known = index.get(name)
        if not (isinstance(known, list) and len(known) == 3 and known[:2] == stamp):
            known = [*stamp, _sha256(root / name)[:16]]
            index[name] = known
            changed = True
        digests.append(f"{known[0]}:{known[2]}")
    if changed:
        try:
            with atomic_file(index_path, "w") as fh:
                json.dump(index, fh, separators=(",", ":"))
        except OSError as exc:  # a full or read-only cache: the digests hold, only uncached
            _LOG.debug("could not write the digest index %s: %s", index_path, exc)
    return digests


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def discard(path: str | Path) -> None:
    """Delete a cache entry written by :func:`save_torch` and its checksum file, if present."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _checksum_path(path).unlink(missing_ok=True)


def torch_save(obj: Any, path: str | Path, fh=None) -> None:
    """``torch.save`` ``obj`` to ``path`` (or the open binary file ``fh`` named ``path``), with
    the write's own ``OSError`` raised on failure.

    torch reports a failed write (a full disk) as a ``RuntimeError`` from its zip writer
    ("unexpected pos"), which reads as a bug of the caller; the ``OSError`` under it (ENOSPC,
    EIO, ...) is what happened, and it is raised with the file's name instead, so that callers
    tell the machine's faults from their own.
    """
    import torch

    try:
        if fh is None:
            with open(path, "wb") as out:  # a Python file: its write errors surface as OSError
                torch.save(obj, out)
        else:
            torch.save(obj, fh)
    except RuntimeError as exc:
        cause = exc.__context__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
        raise
    except OSError as exc:  # the final flush on closing, unnamed
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to the cache entry ``path``, atomically and with a checksum.

    The data go to a temporary sibling, their SHA-256 to ``<path>.sha256`` (atomically), and only
    then is the data renamed into place: whoever sees the entry also finds its checksum. A crash
    at any point leaves no entry, a complete verifiable one, or (when replacing an entry, between
    the two renames) the old data under the new checksum, which :func:`load_torch` detects and
    deletes; no crash leaves wrong data that passes the check.

    Args:
        obj: What to save (tensors, and containers of tensors, numbers and strings).
        path: The entry's final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch_save(obj, path, fh)
            fh.flush()
            os.fsync(fh.fileno())
        with atomic_file(_checksum_path(path), "w") as fh:
            fh.write(f"{_sha256(tmp)}  {path.name}\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _entry_problem(path: Path) -> str | None:
    """Why the entry at ``path`` cannot be trusted, or None if its checksum matches."""
    try:
        recorded = _checksum_path(path).read_text(encoding="ascii").split()
    except FileNotFoundError:
        return "has no checksum file (an older nas-asc or a copy wrote it)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"has an unreadable checksum file ({exc})"
    if len(recorded) != 2 or len(recorded[0]) != 64:
        return "has a malformed checksum file"
    try:
        actual = _sha256(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if actual != recorded[0]:
        return "does not match its checksum (truncated or corrupted)"
    return None


def load_torch(path: str | Path, *, weights_only: bool = True) -> Any | None:
    """Load a cache entry written by :func:`save_torch`, verifying its checksum first.

    Args:
        path: The entry's path.
        weights_only: Passed to ``torch.load`` (True: tensors and plain containers only).

    Returns:
        The saved object, or ``None`` when the entry is absent or was corrupt. A corrupt entry
        (checksum mismatch, truncation, missing checksum, unreadable data) is deleted with a
        one-line warning, so the caller recomputes and saves it again.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    problem = _entry_problem(path)
    if problem is None:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only)
        except Exception as exc:  # torch raises several types for unreadable archives
            problem = f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    _LOG.warning("cache entry %s %s; deleted, it will be recomputed", path, problem)
    discard(path)
    return None


@contextlib.contextmanager
def atomic_array(
    path: str | Path, shape: tuple[int, ...], dtype: Any, *, keep_existing: bool = False
) -> Iterator[Path]:
    """Create the array cache entry ``path`` (a ``.npy`` file), atomically and with a checksum.

    Yields the path of a temporary sibling that already holds a zero-filled ``.npy`` array of
    ``shape`` and ``dtype``, its disk space reserved (a full disk fails here, with ``ENOSPC``, not
    later as a crash of a process writing through a memory map). Fill it through
    ``numpy.load(tmp, mmap_mode="r+")``, from this process or from others. When the block ends
    without an exception the file is synced, its SHA-256 is written to ``<path>.sha256`` and it is
    renamed to ``path``; on an exception it is deleted. The guarantees are those of
    :func:`save_torch`.

    With ``keep_existing``, an entry that another process put in place meanwhile is kept (and
    this one dropped): processes that write the same content at once then all map one file,
    instead of each keeping the copy that the next rename unlinked.

    Example:
        >>> with atomic_array(path, (3, 4), "float16") as tmp:  # doctest: +SKIP
        ...     np.load(tmp, mmap_mode="r+")[:] = 1
    """
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "r+b") as fh:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype))}
            header.update(fortran_order=False, shape=tuple(int(n) for n in shape))
            np.lib.format.write_array_header_1_0(fh, header)
            size = fh.tell() + math.prod(header["shape"]) * np.dtype(dtype).itemsize
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, size)
            fh.truncate(size)  # zero-filled where fallocate is missing (sparse)
        yield tmp
        if keep_existing and path.exists():
            tmp.unlink()
            return
        with open(tmp, "rb") as fh:  # what other processes wrote through their maps, on disk
            os.fsync(fh.fileno())
        with atomic_file(_checksum_path(path), "w") as fh:
            fh.write(f"{_sha256(tmp)}  {path.name}\n")
        if keep_existing:
            try:
                os.link(tmp, path)  # fails where an entry appeared since: that one stays
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                os.replace(tmp, path)
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def recorded_checksum(path: str | Path) -> str | None:
    """The SHA-256 recorded in ``<path>.sha256`` for a cache entry, or None if there is none."""
    try:
        recorded = _checksum_path(Path(path)).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return recorded[0] if len(recorded) == 2 and len(recorded[0]) == 64 else None


def load_array(path: str | Path) -> Any | None:
    """Memory-map an array cache entry written by :func:`atomic_array`, verifying it first.

    The map is copy-on-write (``numpy.load(path, mmap_mode="c")``): pages are read from the file
    when first touched and shared with every other process that maps it; writing to the array
    changes this process's copy only, never the file.

    Returns:
        The array (a :class:`numpy.memmap`), or ``None`` when the entry is absent or was corrupt
        (checksum mismatch, truncation, missing checksum, not a ``.npy`` file): a corrupt entry is
        deleted with a one-line warning, so that the caller recomputes it.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        return None
    problem = _entry_problem(path)
    if problem is None:
        try:
            return np.load(path, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError) as exc:
            problem = f"cannot be mapped ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    _LOG.warning("cache entry %s %s; deleted, it will be recomputed", path, problem)
    discard(path)
    return None


def write_manifest(root: str | Path) -> Path:
    """Write ``root/manifest.sha256``: ``sha256  size  relative/path`` for every other file.

    Write it last, inside the :func:`atomic_dir` block that fills ``root``: it doubles as the
    completion marker.

    Returns:
        The manifest's path.
    """
    root = Path(root)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(root).as_posix()
        lines.append(f"{_sha256(path)}  {path.stat().st_size}  {rel}\n")
    out = root / MANIFEST
    with atomic_file(out, "w") as fh:
        fh.writelines(lines)
    return out


def check_manifest(root: str | Path, hashes: bool = False) -> str | None:
    """Check a folder entry against its manifest.

    Args:
        root: The folder.
        hashes: Also recompute every file's SHA-256 (reads every byte); by default only the
            presence and size of each file are checked, which is cheap and catches truncation
            and missing files.

    Returns:
        None if the folder matches its manifest, else a short description of the first problem.
    """
    root = Path(root)
    try:
        text = (root / MANIFEST).read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"has no {MANIFEST} (it was not completed, or an older nas-asc wrote it)"
    except (OSError, UnicodeDecodeError) as exc:
        return f"has an unreadable {MANIFEST} ({exc})"
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("  ", 2)
        if len(fields) != 3 or not fields[1].isdigit():
            return f"has a malformed {MANIFEST} (line {number})"
        digest, size, rel = fields[0], int(fields[1]), fields[2]
        path = root / rel
        try:
            actual = path.stat().st_size
        except OSError:
            return f"lacks {rel}"
        if actual != size:
            return f"has {rel} of {actual} bytes, expected {size}"
        if hashes and _sha256(path) != digest:
            return f"has {rel} with a wrong checksum"
    return None
