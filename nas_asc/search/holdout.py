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

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from nas_asc.errors import NasAscError

__all__ = [
    "TEST_ATTRS",
    "kendall_tau",
    "load_study_data",
    "measure_front",
    "measure_trials",
    "rank_agreement",
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


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage:
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps it in a cache
    if not isinstance(backend, optuna.storages.RDBStorage):
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
    from optuna.storages._rdb import models
    from sqlalchemy.exc import IntegrityError

    backend = _rdb(study)
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
        study_name=study.study_name, storage=_rdb(study), sampler=study.sampler
    )


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
    from nas_asc.report.pareto import pareto_trials

    todo = [t for t in pareto_trials(study) if "test_int8_accuracy" not in t.user_attrs]
    if not todo:
        return study
    if progress:
        print(
            f"\ntest fold: measuring {len(todo)} Pareto model(s) on {len(protocol.test):,} clips "
            "(once, after the search)",
            flush=True,
        )
    return measure_trials(study, protocol, todo, progress)


def measure_trials(study: optuna.Study, protocol, trials, progress: bool = True) -> optuna.Study:
    """Measure ``trials`` (trained, with checkpoints) on the test fold and store the figures
    (:data:`TEST_ATTRS`); the study, loaded again, is returned."""
    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.search.artifacts import load_checkpoint
    from nas_asc.train.loop import evaluate

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
        set_finished_trial_attrs(study, trial._trial_id, attrs)
        if progress:
            unseen = "n/a" if int8.unseen_accuracy is None else f"{int8.unseen_accuracy:.1%}"
            print(
                f"  trial {trial.number}: int8 {int8.accuracy:.1%} on the test fold (validation "
                f"{trial.user_attrs.get('int8_accuracy', float('nan')):.1%}; unseen devices "
                f"{unseen})",
                flush=True,
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

    info = study.user_attrs.get("data_info")
    if not isinstance(info, dict) or "fingerprint" not in info:
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
    if progress:
        print(f"loading dataset {root} ({split})", flush=True)
    dataset = load_tau22(root, train_split=split)
    if dataset.fingerprint != info["fingerprint"]:
        raise NasAscError(
            f"dataset {root} (split {split}) has fingerprint {dataset.fingerprint}, but study "
            f"{study.study_name!r} was run on {info['fingerprint']}: its files changed; pass "
            "--data with the dataset the study was run on"
        )
    record = study.user_attrs.get("protocol")
    protocol = protocol_from_record(dataset, record) if isinstance(record, dict) else None
    return dataset, info, protocol


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's tau-b rank correlation of two equally long sequences (ties allowed).

    None with fewer than two pairs or when either side is constant (no ranking to compare).
    """
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two sequences of one length, got {x.shape}, {y.shape}")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordance = float((dx * dy).sum())
    n_x, n_y = float((dx != 0).sum()), float((dy != 0).sum())
    if n_x == 0 or n_y == 0:
        return None
    return concordance / float(np.sqrt(n_x * n_y))


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
