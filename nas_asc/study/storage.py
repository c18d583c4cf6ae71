"""A study's storage: its URL parsed once by SQLAlchemy and shown only with the password
masked, and the only module that reads Optuna's internals (storage, ids, table models, and
its exact hypervolume).

Everything that names a study's database (the CLI, the backends, the artifact store) reads the
URL through these functions, so a password can never reach a message unmasked and an SQLite
path is read one way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from nas_asc.errors import NasAscError
from nas_asc.redact import mask_secrets, url_password

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = [
    "artifact_store_path",
    "exact_hypervolume",
    "is_sqlite",
    "parse_storage_url",
    "rdb_backend",
    "rdb_models",
    "safe_url",
    "scrub",
    "sqlite_path",
    "study_storage_id",
    "study_storage",
    "trial_storage_id",
    "unwrap_storage",
]


def safe_url(url: str) -> str:
    """``url`` with its password shown as ``***``: the only form in which nas-asc prints a URL.

    Every form a password can take is masked (:func:`nas_asc.redact.mask_secrets`): in the user
    part (also unencoded, with ``@`` in it), in the query string (``?password=``) and in a libpq
    key/value DSN, whether or not SQLAlchemy can parse the URL.

    Example:
        >>> safe_url("postgresql://ann:s3cret@db/nas")
        'postgresql://ann:***@db/nas'
        >>> safe_url("postgresql://ann@db/nas?password=s3cret")
        'postgresql://ann@db/nas?password=***'
    """
    return mask_secrets(str(url))


def parse_storage_url(url: str) -> URL:
    """The storage URL parsed by SQLAlchemy; ``NasAscError`` (password masked) if it is not one.

    A password with an unencoded ``@`` is refused (SQLAlchemy would take its tail for the host
    and connect there): the message says to percent-encode it.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(str(url))
        parsed.port  # noqa: B018 -- make_url defers parsing the port; a bad one fails here
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = scrub(detail, url)
        raise NasAscError(
            f"--storage {safe_url(url)} is not a database URL ({detail}); write e.g. "
            "sqlite:///studies/my.db or postgresql://USER@HOST:5432/DB"
        ) from None
    if parsed.host and "@" in parsed.host:
        raise NasAscError(
            f"--storage {safe_url(url)}: the password contains an unencoded '@'; "
            "percent-encode it ('@' as %40, ':' as %3A, '/' as %2F) or pass it in the "
            "PGPASSWORD environment variable"
        )
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite storage URL; None for other databases and memory."""
    parsed = parse_storage_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    if parsed.username or parsed.password or parsed.host:
        raise NasAscError(
            f"--storage {safe_url(url)}: an SQLite database is a file and has no user, password "
            "or host; write sqlite:///PATH (e.g. sqlite:///studies/my.db)"
        )
    if parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def is_sqlite(url: str) -> bool:
    """Whether the storage is an SQLite database (one process at a time, one machine)."""
    return parse_storage_url(url).drivername.startswith("sqlite")


def scrub(text: str, url: str) -> str:
    """``text`` with the storage URL shown masked and its password nowhere."""
    return mask_secrets(text, [url_password(url) or ""])


# ---------------------------------------------------------------------------------------------
# Optuna's internals: read here and nowhere else, so an Optuna upgrade that moves them breaks
# one module (tests/test_layout.py checks that no other module touches them)
# ---------------------------------------------------------------------------------------------


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage ``study`` reads and writes through (Optuna may wrap it in a cache)."""
    return study._storage


def study_storage_id(study: optuna.Study) -> int:
    """The study's id in its storage (not its name)."""
    return study._study_id


def trial_storage_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in its storage (unique across studies; not its number)."""
    return trial._trial_id


def unwrap_storage(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage under Optuna's cache (it wraps an RDBStorage in a ``_CachedStorage``)."""
    return getattr(storage, "_backend", storage)


def rdb_backend(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The database storage under ``study``'s cache, or None when it is not in a database."""
    backend = unwrap_storage(study._storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def rdb_models() -> Any:
    """Optuna's SQLAlchemy table models (``TrialModel``, ``TrialUserAttributeModel``, ...), for
    the few writes Optuna's API has no call for (attributes of a finished trial)."""
    from optuna.storages._rdb import models

    return models


def artifact_store_path(store: Any, default: str = "the artifact folder") -> str:
    """The folder of a file-system artifact store, for messages."""
    return str(getattr(store, "_base_path", default))


def exact_hypervolume(points, reference) -> float:
    """Optuna's exact hypervolume of ``points`` (minimized objectives, one row each) up to
    ``reference``: an Optuna internal (``optuna._hypervolume``), so it is reached from here;
    :func:`nas_asc.study.front.compute_hypervolume` is the function the rest of nas-asc calls."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(points), np.asarray(reference)))
