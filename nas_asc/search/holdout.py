"""The end of a search: the Pareto set measured once on the test fold.

Every decision of a search is made on the validation split (:mod:`nas_asc.data.protocol`). When
it ends, each trial on the Pareto front is measured on the test fold with the int8 model it
saved (rebuilt from its checkpoint exactly as the trial built it: same training part, same
normalization, same calibration clips) and the figures are stored on the trial:

``test_int8_accuracy``, ``test_fp32_accuracy``, ``test_accuracy_by_device``,
``test_seen_accuracy``, ``test_unseen_accuracy`` (devices absent from the training data, s4-s6
in TAU22), ``test_log_loss`` and ``test_clips``.

Continuing a study re-measures only the trials new on the front. Nothing here feeds back into
the search: the objectives stay the validation figures. :func:`rank_agreement` tells how well
the validation ranking of the front predicts the test ranking (Kendall's tau-b).

Optuna refuses to change a finished trial's attributes through its API, so these are written
straight into the study's database (the same upsert Optuna uses for a running trial), which
every backend's study is (SQLite, PostgreSQL, MySQL).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas_asc.errors import NasAscError
from nas_asc.progress import reporter_for
from nas_asc.study.front import kendall_tau, pareto_trials
from nas_asc.study.record import StudyRecord
from nas_asc.study.storage import (
    rdb_backend,
    rdb_models,
    study_storage_id,
    trial_storage_id,
)

__all__ = [
    "TEST_ATTRS",
    "check_recordable",
    "load_study_data",
    "rdb_storage",
    "measure_front",
    "measure_trials",
    "rank_agreement",
    "record_trial_attrs",
    "record_unrecorded",
    "reload",
    "set_finished_trial_attrs",
]

_LOG = logging.getLogger(__name__)

TEST_ATTRS = (
    "test_int8_accuracy",
    "test_fp32_accuracy",
    "test_accuracy_by_device",
    "test_seen_accuracy",
    "test_unseen_accuracy",
    "test_log_loss",
    "test_clips",
)


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The database storage under ``study`` (Optuna wraps it in a cache); a one-line
    ``NasAscError`` when the study is not in a database."""
    backend = rdb_backend(study)
    if backend is None:
        raise NasAscError(
            f"study {study.study_name!r} is not in a database storage; test-fold figures are "
            "stored in the study's database (sqlite:///... or postgresql://...)"
        )
    return backend


def set_finished_trial_attrs(study: optuna.Study, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Set user attributes of a (finished) trial in one transaction.

    Readers see them once they load the study again (a loaded study caches finished trials).
    Two processes writing the same attribute at once both succeed; the last write stays.
    """
    models = rdb_models()
    from sqlalchemy.exc import IntegrityError

    backend = rdb_storage(study)
    model = models.TrialUserAttributeModel
    for attempt in range(2):  # a concurrent first insert of the same key: then update it
        session = backend.scoped_session()
        try:
            for key, value in attrs.items():
                row = (
                    session.query(model)
                    .filter(model.trial_id == trial_id, model.key == key)
                    .one_or_none()
                )
                text = json.dumps(value)
                if row is None:
                    session.add(model(trial_id=trial_id, key=key, value_json=text))
                else:
                    row.value_json = text
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            if attempt:
                raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def reload(study: optuna.Study) -> optuna.Study:
    """The study loaded afresh from its database (finished trials' new attributes visible)."""
    return optuna.load_study(
        study_name=study.study_name, storage=rdb_storage(study), sampler=study.sampler
    )


# Results a command computed but the database refused to record wait in this folder of the
# study's artifact folder, one JSON file per trial and record, until the next run records them.
_UNRECORDED = "unrecorded"


def _database_name(backend: optuna.storages.RDBStorage) -> str:
    """The study's database as a user knows it: an SQLite file's path, else its URL (masked)."""
    from nas_asc.redact import mask_secrets

    url = backend.engine.url
    if url.drivername.startswith("sqlite") and url.database:
        return url.database
    return mask_secrets(url.render_as_string(hide_password=True))


def _is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (SQLAlchemyError, optuna.exceptions.StorageInternalError))


def _database_detail(exc: BaseException) -> str:
    """The driver's own words (``attempt to write a readonly database``), on one line."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(cause).strip()
    return text.splitlines()[0] if text else type(cause).__name__


def check_recordable(study: optuna.Study, command: str) -> None:
    """Fail in one line, before ``command`` does any work, if the study's database refuses the
    writes that record its results (a read-only SQLite file or folder, a read-only database
    user). The probe is a write that is rolled back: it changes nothing.

    Raises:
        NasAscError: naming the database, the driver's reason and the fix.
    """
    models = rdb_models()

    backend = rdb_storage(study)
    model = models.StudyModel
    session = backend.scoped_session()
    try:
        session.query(model).filter(model.study_id == study_storage_id(study)).update(
            {model.study_name: model.study_name}, synchronize_session=False
        )
        session.flush()
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        raise NasAscError(
            f"cannot write to the study database {_database_name(backend)} "
            f"({_database_detail(exc)}); {command} records its results there: make it writable "
            "(the file and its folder, not locked by another process, its disk not full), or "
            "copy it somewhere writable and pass --storage with the copy"
        ) from None
    finally:
        session.rollback()
        session.close()


def record_trial_attrs(
    study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any], what: str
) -> None:
    """:func:`set_finished_trial_attrs`, keeping the results if the database refuses them.

    A refused write (the database turned read-only, locked or full since
    :func:`check_recordable`) does not throw away the work that produced ``attrs``: they are
    kept in a JSON file under the artifact folder's ``unrecorded/`` and a one-line
    ``NasAscError`` names it; the next run of the command records them first
    (:func:`record_unrecorded`). ``what`` words the message (``"seed 2 of 3"``).
    """
    try:
        set_finished_trial_attrs(study, trial_storage_id(trial), attrs)
        return
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        error = exc
    where, detail = _database_name(rdb_storage(study)), _database_detail(error)
    folder = StudyRecord.of(study).artifact_dir
    path = None
    if folder:
        path = Path(folder) / _UNRECORDED / f"{study.study_name}-trial{trial.number}-"
        path = path.with_name(path.name + "+".join(sorted(attrs)) + ".json")
        entry = {
            "study": study.study_name,
            "trial": trial.number,
            "trial_id": trial_storage_id(trial),
            "attrs": dict(attrs),
        }
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(entry) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            path = None
    kept = (
        f"they are kept in {path}: make the database writable and run the same command again, "
        "which records them first"
        if path is not None
        else "they could not be kept; make the database writable and run the command again"
    )
    raise NasAscError(
        f"the study database {where} refused to record {what} of trial {trial.number} "
        f"({detail}); {kept}"
    ) from None


def record_unrecorded(study: optuna.Study, command: str, progress: bool = True) -> optuna.Study:
    """Record the results that :func:`record_trial_attrs` kept when the database refused them,
    then delete their files; the study, loaded again if anything was recorded.

    Raises:
        NasAscError: the database still refuses writes, or a kept file is unreadable or names
            no trial of the study (the message names the file).
    """
    say = reporter_for(progress).message
    folder = StudyRecord.of(study).artifact_dir
    kept = Path(folder) / _UNRECORDED if folder else None
    files = sorted(kept.glob(f"{study.study_name}-trial*.json")) if kept and kept.is_dir() else []
    if not files:
        return study
    check_recordable(study, command)
    ids = {trial_storage_id(t): t.number for t in study.get_trials(deepcopy=False)}
    for path in files:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            trial_id, number, attrs = entry["trial_id"], entry["trial"], entry["attrs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NasAscError(
                f"the kept results {path} cannot be read ({type(exc).__name__}: {exc}); "
                "delete the file (its results are then lost) and run the command again"
            ) from None
        if entry.get("study") != study.study_name or ids.get(trial_id) != number:
            raise NasAscError(
                f"the kept results {path} belong to no trial of study {study.study_name!r} "
                f"(trial {number}); delete the file and run the command again"
            )
        set_finished_trial_attrs(study, trial_id, attrs)
        path.unlink()
        say(f"recorded the results of trial {number} kept in {path} when the database refused them")
    with contextlib.suppress(OSError):
        kept.rmdir()  # only if empty
    return reload(study)


def measure_front(study: optuna.Study, protocol, progress: bool = True) -> optuna.Study:
    """Measure every Pareto trial without test-fold figures on the test fold; store them.

    Args:
        study: a nas-asc study whose trials kept checkpoints.
        protocol: the study's :class:`~nas_asc.data.protocol.Protocol` (its test view gives the
            training part the trials trained on and the test fold).
        progress: print one line per measured trial.

    Returns:
        The study, loaded again so that the new attributes show.
    """
    say = reporter_for(progress).message
    todo = [t for t in pareto_trials(study) if "test_int8_accuracy" not in t.user_attrs]
    if not todo:
        return study
    say(
        f"\ntest fold: measuring {len(todo)} Pareto model(s) on {len(protocol.test):,} clips "
        "(once, after the search)"
    )
    return measure_trials(study, protocol, todo, progress)


def measure_trials(study: optuna.Study, protocol, trials, progress: bool = True) -> optuna.Study:
    """Measure ``trials`` (trained, with checkpoints) on the test fold and store the figures
    (:data:`TEST_ATTRS`); the study, loaded again, is returned."""
    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.search.artifacts import load_checkpoint
    from nas_asc.train.loop import evaluate

    say = reporter_for(progress).message
    check_recordable(study, "the test-fold measurement")  # before anything is measured
    view = protocol.test_view()
    features: dict[FrontEnd, Any] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        ckpt = load_checkpoint(study, trial)
        frontend = FrontEnd(**ckpt.frontend)
        if frontend not in features:
            if len(features) >= 2:  # bound memory, as a search does
                features.pop(next(iter(features)))
            features[frontend] = load_features(view, frontend, progress=progress)
        train_set, test_set = features[frontend]
        fp32 = evaluate(ckpt.build_fp32(train_set), test_set)
        int8 = evaluate(ckpt.build_int8(train_set), test_set)
        attrs = {
            "test_int8_accuracy": int8.accuracy,
            "test_fp32_accuracy": fp32.accuracy,
            "test_accuracy_by_device": int8.accuracy_by_device,
            "test_seen_accuracy": int8.seen_accuracy,
            "test_unseen_accuracy": int8.unseen_accuracy,
            "test_log_loss": int8.log_loss,
            "test_clips": len(test_set),
        }
        set_finished_trial_attrs(study, trial_storage_id(trial), attrs)
        unseen = "n/a" if int8.unseen_accuracy is None else f"{int8.unseen_accuracy:.1%}"
        say(
            f"  trial {trial.number}: int8 {int8.accuracy:.1%} on the test fold (validation "
            f"{trial.user_attrs.get('int8_accuracy', float('nan')):.1%}; unseen devices "
            f"{unseen})"
        )
    return reload(study)


def load_study_data(study: optuna.Study, data_root=None, progress: bool = True):
    """The dataset a study was searched on, checked against its fingerprint, and its protocol.

    Args:
        study: a study run by ``nas-asc search``.
        data_root: the dataset root, if not the one the study recorded.
        progress: print the folder being loaded.

    Returns:
        ``(dataset, data_info, protocol)``; ``protocol`` is None for a study run before the
        validation protocol (its figures were measured on the test fold).

    Raises:
        NasAscError: the study records no dataset, the folder is missing, its files changed, or
            its validation split can no longer be rebuilt.
    """
    from pathlib import Path

    from nas_asc.data.protocol import protocol_from_record
    from nas_asc.data.tau22 import load_tau22

    say = reporter_for(progress).message
    recorded = StudyRecord.of(study)
    info = recorded.data_info
    if "fingerprint" not in info:
        raise NasAscError(
            f"study {study.study_name!r} records no dataset (root and fingerprint); it was run "
            "by an older nas-asc: run the search again with this version"
        )
    root = Path(data_root) if data_root is not None else Path(info.get("root", ""))
    if not root.is_dir():
        raise NasAscError(
            f"dataset root {root} of study {study.study_name!r} does not exist; pass --data with "
            "the dataset folder the study was run on"
        )
    split = info.get("train_split", "fold1")
    say(f"loading dataset {root} ({split})")
    dataset = load_tau22(root, train_split=split)
    if dataset.fingerprint != info["fingerprint"]:
        raise NasAscError(
            f"dataset {root} (split {split}) has fingerprint {dataset.fingerprint}, but study "
            f"{study.study_name!r} was run on {info['fingerprint']}: its files changed; pass "
            "--data with the dataset the study was run on"
        )
    record = recorded.protocol
    protocol = protocol_from_record(dataset, record) if record is not None else None
    return dataset, info, protocol


def rank_agreement(trials: Iterable[FrozenTrial]) -> tuple[float | None, int]:
    """Kendall's tau between validation and test int8 accuracy over the measured ``trials``,
    and how many trials it is computed on."""
    pairs = [
        (t.user_attrs["int8_accuracy"], t.user_attrs["test_int8_accuracy"])
        for t in trials
        if "test_int8_accuracy" in t.user_attrs and "int8_accuracy" in t.user_attrs
    ]
    if len(pairs) < 2:
        return None, len(pairs)
    val, test = zip(*pairs, strict=True)
    return kendall_tau(val, test), len(pairs)
