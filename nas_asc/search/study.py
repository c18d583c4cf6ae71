"""The study: its storage, how it is opened and prepared, and where it stands.

Every command that names a study goes through this module, whichever backend runs the trials:

* **Storage URLs** are parsed once, by SQLAlchemy (:func:`parse_storage_url`); messages show them
  through :func:`safe_url`, which masks the password (also of a URL SQLAlchemy cannot parse).
  The default storage is SQLite, ``studies/<study>.db`` in the working folder.
* :func:`open_storage`, :func:`open_study` and :func:`open_existing_study` open an Optuna RDB
  storage (with heartbeats for a search, so that a dead worker's trial is re-queued) and the
  nas-asc study in it (named objectives); :func:`close_storage` closes its connections.
* :func:`prepare_study` creates or continues a study and records what it searches; continuing
  with another space, budget, seed, dataset, validation split or artifact folder is refused
  (:func:`check_existing_study` does the same check before any expensive work).
* :func:`trial_counts` says where a study stands (``done`` is what counts towards ``--trials``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from nas_asc._paths import create_dir
from nas_asc.budget import Budget
from nas_asc.errors import NasAscError
from nas_asc.study.record import StudyRecord, write_search_settings
from nas_asc.study.storage import (
    parse_storage_url,
    rdb_backend,
    rdb_models,
    safe_url,
    scrub,
    sqlite_path,
    study_storage,
    study_storage_id,
    trial_storage_id,
    unwrap_storage,
)

if TYPE_CHECKING:
    from nas_asc.search.objective import SearchContext
    from nas_asc.search.settings import SearchSettings

__all__ = [
    "DIRECTIONS",
    "HEARTBEAT_GRACE",
    "OBJECTIVE_NAMES",
    "RAM_OBJECTIVE",
    "objective_names",
    "SQLITE_BUSY_TIMEOUT",
    "TrialCounts",
    "absolute_storage",
    "check_existing_study",
    "check_storage",
    "close_storage",
    "default_storage",
    "fail_stale_trials",
    "fit_to_space",
    "load_lowered_threads",
    "open_existing_study",
    "open_storage",
    "open_study",
    "prepare_study",
    "retry_history",
    "requeue_trial",
    "check_study_name",
    "trial_counts",
]

_LOG = logging.getLogger(__name__)

#: Seconds an SQLite write waits for another process's lock before it fails. A write that still
#: fails (StorageInternalError) is an error of the machine, not of the trial: the search stops
#: with one line and the trial is re-queued (see ``MACHINE_ERRORS`` in objective.py).
SQLITE_BUSY_TIMEOUT = 30.0

OBJECTIVE_NAMES = ("int8_accuracy", "macs", "param_bytes")
DIRECTIONS = ("maximize", "minimize", "minimize")
#: The optional fourth objective (``--ram-objective``): peak int8 activation bytes, minimized.
RAM_OBJECTIVE = "peak_activation_bytes"


def objective_names(ram: bool = False) -> tuple[str, ...]:
    """The study's objectives: accuracy, MACs, parameter bytes, and with ``ram`` peak RAM."""
    return OBJECTIVE_NAMES + ((RAM_OBJECTIVE,) if ram else ())


def _directions(names: tuple[str, ...]) -> list[optuna.study.StudyDirection]:
    return [
        optuna.study.StudyDirection.MAXIMIZE
        if n == "int8_accuracy"
        else optuna.study.StudyDirection.MINIMIZE
        for n in names
    ]


HEARTBEAT_GRACE = 4  # heartbeats a trial may miss before it counts as abandoned

# ---------------------------------------------------------------------------------------------
# Storage URLs
# ---------------------------------------------------------------------------------------------


#: What a study name may be: it names files and folders (``studies/<study>.db``,
#: ``reports/<study>/``, ``studies/<study>/artifacts``), so one path component, no ``..``.
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_study_name(name: str, source: str = "--study") -> str:
    """Return ``name`` if it is a safe study name, else raise a one-line ``NasAscError``.

    A study name becomes file and folder names, so it must be one plain path component:
    letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 100
    characters (so ``../x``, ``/tmp/x`` and ``a/b`` never decide where files go).
    """
    text = str(name)
    if not _STUDY_NAME.fullmatch(text) or ".." in text:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise NasAscError(
            f"study name {shown!r} (from {source}) is not a plain name: it names files and "
            "folders, so use letters, digits, '.', '_' and '-' (starting with a letter or "
            "digit, at most 100 characters, no '..'); pass --study NAME"
        )
    return text


def default_storage(study_name: str, studies_dir: str | Path = "studies") -> str:
    """SQLite storage ``studies/<study>.db`` (relative to the working directory).

    Creates nothing: the folder is made when the study is (:func:`open_storage`).
    """
    check_study_name(study_name)
    return f"sqlite:///{Path(studies_dir) / f'{study_name}.db'}"


def absolute_storage(url: str) -> str:
    """``url`` with a relative SQLite file made absolute (for processes in other folders)."""
    db = sqlite_path(url)
    if db is None or db.is_absolute():
        return url
    return parse_storage_url(url).set(database=str(db.resolve())).render_as_string(False)


def check_storage(url: str) -> None:
    """Fail in one line, before the dataset is loaded or a teacher trained, if the storage
    cannot be opened. Creates nothing: an SQLite file's folder is checked (connecting would
    create the file); a database server is connected to once, with a short timeout. An
    in-memory SQLite database (gone at exit, its checkpoints not) and an SQLite path that is a
    folder are refused."""
    from nas_asc._paths import check_creatable

    parsed = parse_storage_url(url)
    if parsed.drivername.startswith("sqlite"):
        db = sqlite_path(url)
        if db is None:  # sqlite:///:memory: or sqlite://
            raise NasAscError(
                f"--storage {safe_url(url)} is an in-memory SQLite database: the study would "
                "vanish when the command exits while its checkpoints stay on disk; pass a file, "
                "sqlite:///PATH (e.g. sqlite:///studies/my.db), or leave --storage out"
            )
        if db.is_dir():
            raise NasAscError(
                f"--storage {safe_url(url)} names {db}, which is a folder, not an SQLite "
                f"database file; pass a file in it, e.g. sqlite:///{db / 'study.db'}"
            )
        check_creatable(db.parent, "studies", "--storage")
        return
    import sqlalchemy

    engine = None
    try:
        connect_args = (
            {"connect_timeout": 10} if parsed.drivername.startswith(("postgresql", "mysql")) else {}
        )
        engine = sqlalchemy.create_engine(parsed, connect_args=connect_args)
        with engine.connect():
            pass
    except ImportError as exc:
        raise NasAscError(
            f"cannot open study storage {safe_url(url)}: its database driver is not installed "
            f"({exc}); install it (PostgreSQL: pip install 'psycopg[binary]')"
        ) from None
    except Exception as exc:  # SQLAlchemy and drivers raise many types; the user needs one line
        raise NasAscError(
            f"cannot open study storage {safe_url(url)}: {_detail(exc, url)}; check the URL "
            "(e.g. postgresql://user@host/db) and that the database server is running"
        ) from None
    finally:
        if engine is not None:
            engine.dispose()


def _detail(exc: BaseException, url: str) -> str:
    """The first line of an exception's message, with the URL's password masked."""
    text = str(exc).strip()
    return scrub(text.splitlines()[0] if text else type(exc).__name__, url)


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------

# Arbitrary keys of the PostgreSQL advisory locks that serialise workers starting together.
_SCHEMA_LOCK_KEY = 0x6E61_735F_6173_63  # Optuna creating its tables
_STUDY_LOCK_KEY = _SCHEMA_LOCK_KEY + 1  # a worker checking and recording the study's settings


@contextlib.contextmanager
def _advisory_lock(url: str, key: int) -> Iterator[None]:
    """Hold PostgreSQL advisory lock ``key`` of the storage's database inside the block.

    Workers that start together on a fresh database would otherwise all run ``CREATE TABLE``
    at once (all but one fail with a unique violation in PostgreSQL's catalog), and could each
    record their own settings in a study that another is creating. The lock is per database and
    released with its connection, so a killed worker cannot leave it held. Other back ends need
    nothing: SQLite serialises writes itself, and several processes on one SQLite file are not a
    supported setup.
    """
    parsed = parse_storage_url(url)
    if not parsed.drivername.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeats outlive a write the database refuses.

    Optuna beats in a thread of its own that dies at the first failed write (a locked database,
    a full disk), printing its traceback, and leaves the trial without heartbeats although its
    worker lives on. Here a failed beat is skipped: the next one follows an interval later, and
    the trial's own next write meets the same failure and stops the search in one line.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError as exc:
            _LOG.debug("heartbeat of trial %s not recorded: %r", trial_id, exc)


def open_storage(
    url: str, heartbeat: int | None = None, max_retry: int = 2
) -> optuna.storages.RDBStorage:
    """Open the Optuna RDB storage at ``url`` (creating an SQLite file's folder).

    Args:
        url: the storage URL.
        heartbeat: seconds between a running trial's heartbeats; a trial silent for
            ``HEARTBEAT_GRACE`` heartbeats belongs to a dead worker and is failed and re-queued
            (same parameters) by whichever worker notices first. None: no heartbeats (readers).
        max_retry: times such a trial is re-queued before it stays failed.

    Raises:
        NasAscError: the URL is malformed, its driver missing or its server unreachable (the
            message masks the password).
    """
    parsed = parse_storage_url(url)
    kwargs: dict = {}
    if heartbeat is not None:
        kwargs = dict(
            heartbeat_interval=heartbeat,
            grace_period=HEARTBEAT_GRACE * heartbeat,
            heartbeat_stale_trial_callback=_RequeueStaleTrial(
                max_retry, HEARTBEAT_GRACE * heartbeat
            ),
        )
    if (db := sqlite_path(url)) is not None:
        fix = "run from a writable folder or pass --storage"
        create_dir(db.parent, f"the studies folder {db.parent}", fix)
    if parsed.drivername.startswith("sqlite"):
        engine_kwargs: dict = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    else:  # pool_pre_ping: a worker that idles past the server's timeout reconnects cleanly
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings(), _advisory_lock(url, _SCHEMA_LOCK_KEY):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _Storage(str(url), engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as exc:
        raise NasAscError(
            f"cannot open study storage {safe_url(url)}: {exc}; install the database driver "
            "(PostgreSQL: pip install 'psycopg[binary]')"
        ) from None
    except Exception as exc:  # SQLAlchemy raises many types; the user needs one line
        raise NasAscError(
            f"cannot open study storage {safe_url(url)}: {_detail(exc, url)}; check the URL "
            "(e.g. sqlite:///studies/my.db or postgresql://user@host/db) and that the database "
            "server is running"
        ) from None


def close_storage(store: optuna.storages.BaseStorage) -> None:
    """Close the database connections of an RDB storage (no-op for others)."""
    engine = getattr(unwrap_storage(store), "engine", None)
    if engine is not None:
        engine.dispose()


def open_study(
    study_name: str,
    storage: str | optuna.storages.BaseStorage,
    create: bool = False,
    heartbeat: int | None = None,
    max_retry: int = 2,
    sampler: optuna.samplers.BaseSampler | None = None,
    ram_objective: bool = False,
) -> optuna.Study:
    """Open (or with ``create``, create or continue) a nas-asc study.

    Args:
        study_name: the study.
        storage: its storage URL, or an open storage.
        create: create the study if it does not exist (with nas-asc's named objectives).
        ram_objective: with ``create``, the study has the fourth objective (peak activation
            RAM); continuing a study is refused unless it was created with the same objectives.
        heartbeat, max_retry: see :func:`open_storage` (a URL only).
        sampler: the study's sampler; None: random (readers sample nothing; a search sets its
            own per trial).

    Raises:
        NasAscError: no such study (without ``create``), or one not made by nas-asc.
    """
    if isinstance(storage, str):
        url, store = storage, open_storage(storage, heartbeat, max_retry)
    else:
        url, store = "the storage", storage
    sampler = sampler or optuna.samplers.RandomSampler()
    if create:
        names = objective_names(ram_objective)
        study = optuna.create_study(
            study_name=study_name,
            storage=store,
            directions=_directions(names),
            sampler=sampler,
            load_if_exists=True,
        )
        _check_objectives(study, ram_objective, url)
        with warnings.catch_warnings():
            # experimental since Optuna 3.2 and unchanged since; the dashboard reads the names
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(names))
        return study
    try:
        return optuna.load_study(study_name=study_name, storage=store, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise NasAscError(
            f"no study named {study_name!r} in {safe_url(url)}; existing studies: "
            f"{', '.join(names) or '(none)'}"
        ) from None


def _check_objectives(study: optuna.Study, ram_objective: bool, url: str) -> None:
    """Refuse a study whose objectives are not nas-asc's (with or without the RAM one)."""
    names = objective_names(ram_objective)
    if list(study.directions) == _directions(names):
        return
    other = objective_names(not ram_objective)
    if list(study.directions) == _directions(other) and study.metric_names == list(other):
        flag = "with" if len(other) > len(names) else "without"
        raise NasAscError(
            f"study {study.study_name!r} was created {flag} the RAM objective "
            f"({', '.join(other)}); continue it {flag} --ram-objective, or choose a new "
            "--study name"
        )
    raise NasAscError(
        f"study {study.study_name!r} in {safe_url(url)} was not created by nas-asc (its "
        "directions differ); choose another --study name"
    )


def open_existing_study(name: str, storage: str | None) -> tuple[optuna.Study, str]:
    """Open a study that must exist (``report``, ``evaluate``, ``dashboard``, ``export``).

    ``storage`` None is the default ``studies/<name>.db``. A missing SQLite file is refused
    rather than opened (opening it would create an empty database).

    Returns:
        ``(study, storage URL)``.
    """
    if storage is None:
        storage = default_storage(name)
        db = sqlite_path(storage)
        if not db.exists():
            raise NasAscError(
                f"no study database {db}; run `nas-asc search --study {name}` first or "
                "pass --storage"
            )
    elif (db := sqlite_path(storage)) is not None and not db.is_file():
        raise NasAscError(
            f"no study database {db}; check --storage, or run "
            f"`nas-asc search --study {name} --storage {safe_url(storage)}` first"
        )
    study = open_study(name, storage)
    _check_made_by_nas_asc(study, storage)  # before a command writes anything for it
    return study, storage


def _check_made_by_nas_asc(study: optuna.Study, url: str) -> None:
    """Refuse a study that ``nas-asc search`` did not create (plain Optuna's, another tool's):
    its trials lack what every command reads (MACs, parameter bytes, checkpoints).

    A nas-asc study has nas-asc's objectives (with or without the RAM one) in their directions,
    named so, or, from before the names were recorded, unnamed with the budget it recorded.
    """
    for ram in (False, True):
        names = objective_names(ram)
        if list(study.directions) != _directions(names):
            continue
        recorded = study.metric_names
        if recorded == list(names) or (recorded is None and StudyRecord.of(study).budget):
            return
    directions = ", ".join(d.name.lower() for d in study.directions)
    raise NasAscError(
        f"study {study.study_name!r} in {safe_url(url)} was not created by nas-asc (objectives "
        f"{study.metric_names or 'unnamed'}, directions {directions}; nas-asc's are "
        f"{', '.join(objective_names())} [+ {RAM_OBJECTIVE}]); pass the --study of a "
        "nas-asc search, or run `nas-asc search` to create one"
    )


# ---------------------------------------------------------------------------------------------
# Preparing: what a study records, and the check that a continued study is the same search
# ---------------------------------------------------------------------------------------------


def _check_same_settings(
    study: optuna.Study,
    space_name: str,
    budget: Budget,
    seed: int,
    fingerprint: str | None,
    protocol: dict | None = None,
) -> None:
    """Refuse to continue a study with another space, budget, seed, dataset or protocol.

    Sampler, pruner, workers and ``--epochs`` may change between runs of a study; these may
    not, or its trials would no longer be comparable (another dataset or validation split),
    reproducible (another seed) or judged alike (another budget).
    """
    record = StudyRecord.of(study)
    if not record.settled:
        return
    if record.space != space_name or record.budget != budget.to_dict():
        raise NasAscError(
            f"study {study.study_name!r} was started with space {record.space!r} and budget "
            f"{(record.budget or {}).get('name')!r}; continue it with the same --space and "
            "--budget, or choose a new --study name"
        )
    if record.seed is not None and record.seed != seed:
        raise NasAscError(
            f"study {study.study_name!r} was started with --seed {record.seed}; continue it "
            f"with --seed {record.seed} (its trials' seeds derive from it), or choose a new "
            "--study name"
        )
    if fingerprint and record.fingerprint and record.fingerprint != fingerprint:
        raise NasAscError(
            f"study {study.study_name!r} was run on another dataset ({record.data}); "
            "continue it with the same --data and --train-split, or choose a new --study name"
        )
    _check_same_revision(study)
    if protocol is not None:
        _check_same_protocol(study, protocol)


def _model_revision(family: Any) -> int | None:
    from nas_asc.models import MODELS
    from nas_asc.models._registry import get_model_revision

    return get_model_revision(family) if family in MODELS else None


def _check_same_revision(study: optuna.Study) -> None:
    """Refuse to continue a study whose family has changed since (see ``register_model``):
    its trials and the new ones would be different networks on one front."""
    record = StudyRecord.of(study)
    family = record.family
    now = _model_revision(family)
    recorded = 1 if record.model_revision is None else record.model_revision
    if now is not None and recorded != now:
        raise NasAscError(
            f"study {study.study_name!r} trained {family} revision {recorded}; the {family} "
            f"family has changed since (now revision {now}: it computes its authors' function); "
            "choose a new --study name"
        )


def _check_same_protocol(study: optuna.Study, protocol: dict) -> None:
    """Refuse to continue a study on another validation split (or one whose objectives were
    measured on the test fold, by an nas-asc older than the validation protocol)."""
    recorded = StudyRecord.of(study).protocol
    name = study.study_name
    if not isinstance(recorded, dict):
        raise NasAscError(
            f"study {name!r} was run before nas-asc searched on a validation split (its "
            "objectives read the test fold); choose a new --study name"
        )
    keys = ("train_split", "validation", "validation_split")
    if all(recorded.get(k) == protocol.get(k) for k in keys):
        return
    if recorded.get("validation") == "file":
        was = f"the validation split file {recorded.get('validation_file')}"
        how = f"--validation-split {recorded.get('validation_file')}"
    else:
        fraction = recorded.get("validation_fraction")
        was = f"--validation {fraction} (seed {recorded.get('validation_seed')})"
        how = f"--validation {fraction}"
    raise NasAscError(
        f"study {name!r} was searched on training split {recorded.get('train_split')} with "
        f"{was}, another validation split than this one; continue it with --train-split "
        f"{recorded.get('train_split')} {how} on the same dataset, or choose a new --study name"
    )


def check_existing_study(
    storage: str,
    study_name: str,
    space_name: str,
    budget: Budget,
    seed: int,
    fingerprint: str | None,
    artifact_dir: str | Path | None = None,
    protocol: dict | None = None,
    ram_objective: bool | None = None,
) -> str | None:
    """Check, before any expensive work, that an existing study may be continued as asked.

    Creates nothing: a missing SQLite file or study is a new study. Raises ``NasAscError`` for a
    study of another space, budget, seed, dataset or validation split (``protocol``:
    :meth:`~nas_asc.data.protocol.Protocol.identity`), or (``artifact_dir``: given explicitly)
    with another artifact folder, or (``ram_objective`` not None) with other objectives.

    Returns:
        The artifact folder the study records, or None.
    """
    db = sqlite_path(storage)
    if db is not None and not db.is_file():
        return None
    store = open_storage(storage)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=store)
        except KeyError:
            return None
        if ram_objective is not None:
            _check_objectives(study, ram_objective, storage)
        _check_same_settings(study, space_name, budget, seed, fingerprint, protocol)
        recorded = StudyRecord.of(study).artifact_dir
        if recorded and artifact_dir and Path(recorded) != Path(artifact_dir).resolve():
            raise NasAscError(
                f"study {study_name!r} keeps its checkpoints in {recorded}; continue it with "
                f"--artifacts {recorded}, or choose a new --study name"
            )
        return recorded
    finally:
        close_storage(store)


def _resolve_artifact_dir(
    study: optuna.Study, context: SearchContext, settings: SearchSettings
) -> str:
    """The study's artifact folder: the one it records, else ``settings.artifact_dir``.

    A worker given a folder explicitly (``--artifacts``) that differs from the recorded one is
    refused; one that was only given the default adopts the recorded folder, so that workers
    started together from different working folders keep one store per study.
    """
    artifact_dir = str(Path(settings.artifact_dir).resolve())
    recorded = StudyRecord.of(study).artifact_dir
    if not recorded or Path(recorded) == Path(artifact_dir):
        return artifact_dir
    if settings.artifact_dir_explicit:
        raise NasAscError(
            f"study {study.study_name!r} keeps its checkpoints in {recorded}; continue it with "
            f"--artifacts {recorded}, or choose a new --study name"
        )
    from nas_asc.search.artifacts import open_artifact_store

    context.artifact_store = open_artifact_store(recorded)
    context.reporter.message(f"checkpoints go to the study's artifact folder {recorded}")
    return recorded


def prepare_study(
    context: SearchContext,
    settings: SearchSettings,
    data_label: str,
    data_info: dict | None = None,
) -> optuna.Study:
    """Create or continue the study and record what it searches (space, budget, data, seed).

    ``data_info`` (dataset ``root``, ``train_split``, ``fingerprint``, the teacher and IR
    sources) is recorded so that the end-of-search measurement, ``evaluate`` and export can
    rebuild the study's data; its ``protocol`` entry (:meth:`Protocol.to_dict
    <nas_asc.data.protocol.Protocol.to_dict>`) becomes the study attribute ``protocol``.
    Continuing a study with another space, budget, seed, dataset, validation split or artifact
    folder is refused.
    """
    data_info = dict(data_info or {})
    protocol = data_info.pop("protocol", None)
    study = open_study(
        settings.study_name,
        settings.storage,
        create=True,
        heartbeat=settings.heartbeat,
        max_retry=settings.max_retry,
        ram_objective=settings.ram_objective,
    )
    # one worker at a time checks the recorded settings and records its own
    with _advisory_lock(settings.storage, _STUDY_LOCK_KEY):
        fingerprint = data_info.get("fingerprint")
        new = not StudyRecord.of(study).settled  # the first worker of a study without trials
        _check_same_settings(
            study, context.space.name, context.budget, settings.seed, fingerprint, protocol
        )
        artifact_dir = (
            _resolve_artifact_dir(study, context, settings) if settings.artifact_dir else None
        )
        write_search_settings(
            study,
            artifact_dir=artifact_dir,
            data_info=data_info,
            protocol=protocol,
            budget=context.budget,
            space_definition=context.space.to_dict(),
            warm_start=_warm_start(study, context, settings) if new and not study.trials else None,
            model_revision=_model_revision(context.space.model),
            space=context.space.name,
            data=data_label,
            seed=settings.seed,
            sampler=settings.sampler.describe(),
            pruner=settings.pruner.describe(),
        )
    return study


def _warm_start(study: optuna.Study, context: SearchContext, settings: SearchSettings) -> dict:
    """Queue the space's references in a new study (unless ``--no-warm-start``); report it."""
    if not context.space.references:
        return {"enabled": settings.warm_start, "queued": [], "skipped": {}}
    if not settings.warm_start:
        context.reporter.message(
            f"warm start off: the {len(context.space.references)} reference configurations "
            "of the space are not queued"
        )
        return {"enabled": False, "queued": [], "skipped": {}}
    from nas_asc.search.warmstart import queue_references

    outcome = queue_references(study, context.space, context.budget, limit=settings.n_trials)
    queued = ", ".join(outcome["queued"]) or "none"
    skipped = "".join(f"; skipped {n} ({why})" for n, why in outcome["skipped"].items())
    context.reporter.message(f"warm start: queued the reference configurations {queued}{skipped}")
    return {"enabled": True, **outcome}


# ---------------------------------------------------------------------------------------------
# Where a study stands
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialCounts:
    """Where a study stands; ``done`` is what counts towards ``--trials``."""

    trained: int
    infeasible: int  # over-budget proposals, rejected untrained: not counted in ``done``
    pruned: int
    failed: int  # failed for good (an error in the trial, or a dead worker's trial out of retries)
    retried: int  # abandoned by a dead worker and re-queued: not counted, their retry is
    running: int
    waiting: int  # re-queued, not started yet

    @property
    def done(self) -> int:
        """Trials that count towards ``--trials``: the candidates that trained (to the end,
        stopped early, or failing). Over-budget proposals are recorded but cost no training
        and do not count."""
        return self.trained + self.pruned + self.failed


def retry_history(trial: optuna.trial.FrozenTrial) -> list[int]:
    """Numbers of the trials this one repeats after their workers died (oldest first)."""
    with warnings.catch_warnings():
        # experimental since Optuna 3.0 and unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


def trial_counts(study: optuna.Study) -> TrialCounts:
    """Count the study's trials by outcome (a re-queued crash counts once, as its retry)."""
    return _count(study.get_trials(deepcopy=False))


def _count(trials: list[optuna.trial.FrozenTrial]) -> TrialCounts:
    retried_numbers = {n for t in trials for n in retry_history(t)}
    counts = dict.fromkeys(
        ("trained", "infeasible", "pruned", "failed", "retried", "running", "waiting"), 0
    )
    for t in trials:
        if t.state == TrialState.RUNNING:
            counts["running"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        elif t.state == TrialState.FAIL:
            counts["retried" if t.number in retried_numbers else "failed"] += 1
        elif t.user_attrs.get("status") == "infeasible":
            counts["infeasible"] += 1
        else:
            counts["trained"] += 1
    return TrialCounts(**counts)


def load_lowered_threads(study: optuna.Study) -> int:
    """Trained trials that ran some epochs on fewer threads than their share (``--threads auto``
    on a busy machine): their float rounding, and so their figures, depend on that load."""
    lowered = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        accel = t.user_attrs.get("train_accel") or {}
        threads, share = accel.get("threads") or [], accel.get("share")
        # --threads N: fewer threads than the share by choice, the same under any load
        fixed = any(str(note).startswith("threads fixed") for note in accel.get("notes") or [])
        if fixed:
            continue
        if isinstance(share, int) and any(isinstance(n, int) and n < share for n in threads):
            lowered += 1
    return lowered


def requeue_trial(study: optuna.Study, trial_id: int, reason: str) -> int | None:
    """Fail the trial ``trial_id`` if it is still running and queue a copy to run again.

    For a trial stopped by something that is not its candidate's fault (Ctrl-C, SIGTERM, a full
    disk, a broken data file): the copy has the same parameters and, through its retry
    history, the same seed, and it is what counts towards ``--trials``; the stopped trial
    counts as re-queued, like a dead worker's. A trial that already finished is left alone.
    Nothing is raised: when the storage itself refuses writes (a full disk) the trial stays as
    it is, and a running one is re-queued by its stale heartbeat on the next run.

    Returns:
        The number of the queued copy, or None if nothing was queued.
    """
    try:
        storage = study_storage(study)
        frozen = storage.get_trial(trial_id)
        if frozen.state == TrialState.RUNNING:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        elif frozen.state != TrialState.FAIL or frozen.user_attrs.get("status") == "failed":
            return None  # finished, or failed for a reason of its own
        history = [*retry_history(frozen), frozen.number]
        # the copy starts clean (the stopped run's partial figures are not its results) and
        # says why it runs
        attrs = {"requeued_after": f"trial {frozen.number} {reason}"}
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=frozen.params,
                distributions=frozen.distributions,
                user_attrs=attrs,
                system_attrs={
                    # not the stopped run's constraints: the copy computes its own
                    **{k: v for k, v in frozen.system_attrs.items() if k == "fixed_params"},
                    "failed_trial": history[0],
                    "retry_history": history,
                },
            )
        )
        trials = study.get_trials(deepcopy=False)
    except Exception as exc:  # the storage refusing writes: the heartbeat path takes over
        _LOG.debug("could not re-queue trial %s: %r", trial_id, exc)
        return None
    from nas_asc.search.artifacts import remove_artifacts_of_failed_trials

    with contextlib.suppress(Exception):  # clean-up (room on a full disk), never a reason to stop
        remove_artifacts_of_failed_trials(
            study, [t for t in trials if trial_storage_id(t) == trial_id]
        )
    return max(t.number for t in trials)


class _RequeueStaleTrial:
    """What happens to a dead worker's trial (its heartbeat stale) once Optuna has failed it:
    :func:`requeue_trial` queues its copy, whose ``requeued_after`` says why, at most
    ``max_retry`` times along a chain of copies (a trial that keeps killing its worker, say out
    of memory, then stays failed).

    In place of Optuna's ``RetryHeartbeatStaleTrialCallback``, whose copy carries the dead run's
    user attributes (its partial figures, no ``requeued_after``) and constraints (which the copy
    sets again, so that Optuna warns they are ignored).
    """

    def __init__(self, max_retry: int, grace: float) -> None:
        self.max_retry = max_retry
        self.grace = grace  # seconds without a heartbeat after which a trial counts as abandoned

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(retry_history(trial)) >= self.max_retry:
            return
        reason = f"was left running by a worker that died (no heartbeat for {self.grace:g} s)"
        requeue_trial(study, trial_storage_id(trial), reason)


def fit_to_space(trial: optuna.Trial, distributions: dict[str, Any]) -> None:
    """Fit the parameters a queued copy brought along to the space it runs in now.

    A copy (:func:`requeue_trial`) keeps its parameters with the distributions of the search
    that stopped it. A continued search may bound a dimension differently (``--epochs`` is the
    upper bound of ``train.epochs``): the copy's value is then clipped into the new bounds and
    stored with the current distribution, so it trains as this search allows and Optuna finds
    the distribution it is asked for (else it warns of inconsistent parameter values and keeps
    the old one). Categorical dimensions cannot change within a study (Optuna refuses it).

    Args:
        trial: the running trial, before its parameters are suggested.
        distributions: the current space's distribution of each parameter name.
    """
    from optuna.distributions import distribution_to_json

    models = rdb_models()

    backend = unwrap_storage(trial.storage)
    stored = trial.distributions
    changed = {
        name: new
        for name, new in distributions.items()
        if name in stored
        and stored[name] != new
        and isinstance(new, _NUMERIC)
        and type(stored[name]) is type(new)
    }
    if not changed or not isinstance(backend, optuna.storages.RDBStorage):
        return
    frozen = trial._cached_frozen_trial  # what Trial.suggest_* compares with (Optuna's own)
    session = backend.scoped_session()
    try:
        for name, new in changed.items():
            value = min(max(trial.params[name], new.low), new.high)
            if new.step is not None:  # onto the grid, inside the bounds
                value = min(new.low + round((value - new.low) / new.step) * new.step, new.high)
            value = type(trial.params[name])(value)
            row = (
                session.query(models.TrialParamModel)
                .filter(models.TrialParamModel.trial_id == trial_storage_id(trial))
                .filter(models.TrialParamModel.param_name == name)
                .one()
            )
            row.param_value = new.to_internal_repr(value)
            row.distribution_json = distribution_to_json(new)
            frozen.params[name] = value
            frozen.distributions[name] = new
        session.commit()
    finally:
        session.close()


_NUMERIC = (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution)


def fail_stale_trials(study: optuna.Study) -> TrialCounts:
    """Fail and re-queue the trials of dead workers (stale heartbeats), delete the artifact
    files of failed trials, then count.

    A trial is running from the moment Optuna starts it, but its heartbeat thread beats only
    once its parameters are sampled; a worker killed in between leaves a trial that Optuna
    never takes for stale (it has no heartbeat to age). Such a trial first gets a heartbeat
    dated now, so it ages like any other: a live worker's own beats follow within a heartbeat,
    a dead worker's trial is failed and re-queued after the grace period.
    """
    _beat_for_unbeaten_trials(study)
    with warnings.catch_warnings():
        # Optuna flags its heartbeat and retry helpers experimental; they are stable since 3.0
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    from nas_asc.search.artifacts import remove_artifacts_of_failed_trials

    trials = study.get_trials(deepcopy=False)
    remove_artifacts_of_failed_trials(study, trials)  # a killed trial's; its retry makes its own
    return _count(trials)


def _beat_for_unbeaten_trials(study: optuna.Study) -> None:
    models = rdb_models()

    backend = rdb_backend(study)
    if backend is None or backend.heartbeat_interval is None:
        return
    session = backend.scoped_session()
    try:
        running = (
            session.query(models.TrialModel)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialModel.study_id == study_storage_id(study))
            .all()
        )
        unbeaten = [t.trial_id for t in running if not t.heartbeats]
    finally:
        session.close()
    for trial_id in unbeaten:
        backend.record_heartbeat(trial_id)
