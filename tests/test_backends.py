"""Conformance suite: every registered search backend writes the same study.

The same small search runs on every backend of :data:`~nas_asc.search.backends.BACKENDS` (and on
the optuna backend's parallel workers when a PostgreSQL server is given): first two trials, a
candidate over budget (rejected untrained, not counted) and one whose config its recipe refuses
(failed, the study goes on), then continued to four, so that sampled trials, some over budget,
run before and after a resume. Every backend must
leave the same records as the one-process reference: trial numbers, states, parameters,
objectives, statuses, reasons and the measured figures, bit for bit (one thread per trial, so the
float rounding is the same wherever a trial runs).
"""

from __future__ import annotations

import os
import uuid

import pytest
import torch
from optuna.trial import TrialState

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.errors import NasAscError
from nas_asc.progress import RecordingReporter
from nas_asc.search.backends import BACKENDS, create_backend, list_backends
from nas_asc.search.objective import SearchContext
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import open_study, trial_counts

SPACE = {
    "name": "tiny-conformance",
    "model": "cnn",
    "fixed": {
        "model": {"variant": "sm1"},
        "frontend": {"sample_rate": 8000, "hop_length": 512, "n_mels": 32},
        "train": {"lr": 0.02, "epochs": 1},
    },
    "dimensions": {
        "model.width": {"type": "categorical", "choices": [0.5, 1.0, 4.0]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.batch_size": {"type": "categorical", "choices": [1, 32]},
    },
}
OVER_BUDGET = {"model.width": 4.0, "model.dropout": 0.1, "train.batch_size": 32}
REFUSED = {"model.width": 0.5, "model.dropout": 0.1, "train.batch_size": 1}
# a study seed whose sampled trials mix proposals over budget (rejected, uncounted) with
# trainable ones, before and after the resume
SEED = 17
# wall-clock times, where a trial ran, artifact ids: the only attributes allowed to differ
_CLOCK = ("seconds", "time", "worker", "datetime", "artifact", "accel")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(c in k for c in _CLOCK)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _records(study) -> list[tuple]:
    return [
        (
            t.number,
            t.state,
            t.params,
            t.values,
            _strip(t.user_attrs),
            t.system_attrs.get("fixed_params"),
        )
        for t in study.get_trials(deepcopy=False)
    ]


def _cases() -> list:
    # Ray starts a local cluster (half a minute on 2 cores): with the slow tests, which also
    # run a two-worker Ray search (tests/test_ray_backend.py)
    cases = [
        pytest.param(name, 1, False, id=name, marks=[pytest.mark.slow] if name == "ray" else [])
        for name in list_backends()
    ]
    cases.append(pytest.param("optuna", 2, True, id="optuna-2-workers-postgresql"))
    return cases


def _postgres() -> str:
    url = os.environ.get("NAS_ASC_TEST_POSTGRES")
    if not url:
        if os.environ.get("NAS_ASC_REQUIRE_POSTGRES"):
            pytest.fail("NAS_ASC_REQUIRE_POSTGRES is set but NAS_ASC_TEST_POSTGRES is not")
        pytest.skip("no PostgreSQL server (set NAS_ASC_TEST_POSTGRES; .ci/postgres.sh starts one)")
    return url


def _search(
    backend: str,
    workers: int,
    storage: str,
    dataset,
    n_trials: int,
    reporter=None,
    study: str = "conf",
):
    teacher = torch.randn(dataset.n_meta_rows, 10, generator=torch.Generator().manual_seed(7))
    context = SearchContext(
        SearchSpace.from_dict(SPACE),
        DEFAULT_BUDGET,
        dataset,
        teacher,
        seed=SEED,
        progress=False,
        reporter=reporter,
    )
    settings = SearchSettings(
        study,
        storage,
        n_trials=n_trials,
        seed=SEED,
        # every trial of this study a random one: what TPE proposes depends on the trials
        # finished when it asks, which differs between one process and parallel workers
        sampler="tpe:n_startup_trials=10",
        pruner="none",
        workers=workers,
        threads=1,
    )
    if n_trials == 2:
        created = open_study(study, storage, create=True)
        created.enqueue_trial(OVER_BUDGET)
        created.enqueue_trial(REFUSED)
    return create_backend(backend).run(context, settings, "tiny")


@pytest.fixture(scope="module")
def reference(tiny_search, tmp_path_factory):
    """The one-process optuna backend's records, and what its reporter saw."""
    storage = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}"
    first = RecordingReporter()
    _search("optuna", 1, storage, tiny_search, 2, first)
    second = RecordingReporter()
    study = _search("optuna", 1, storage, tiny_search, 4, second)
    return _records(study), first, second


# its fixture runs a search (8 s)
@pytest.mark.slow
def test_the_reference_search_fails_one_trial_and_goes_on(reference):
    records, first, second = reference
    states = [(r[1], r[4]["status"]) for r in records]
    # proposals over budget are rejected untrained and take no slot: the first search (2
    # trials) runs on to its second counted trial, the continued one (4) to its fourth
    infeasible, failed, trained = (
        (TrialState.COMPLETE, "infeasible"),
        (TrialState.FAIL, "failed"),
        (TrialState.COMPLETE, "trained"),
    )
    assert states == [infeasible, failed, failed, infeasible, infeasible, trained, trained]
    assert "batch_size" in records[1][4]["fail_reason"]
    assert records[0][4]["infeasible_reason"] == (
        "725,578 parameter bytes > 128,000; 181,415,402 MACs > 30,000,000"
    )
    # the reporter heard every trial, with the searched values and the study's count
    assert [(t.number, t.state, t.done) for t in first.trials()] == [
        (0, "infeasible", 0),
        (1, "failed", 1),
        (2, "failed", 2),
    ]
    assert [(t.number, t.state, t.done) for t in second.trials()] == [
        (3, "infeasible", 2),
        (4, "infeasible", 2),
        (5, "trained", 3),
        (6, "trained", 4),
    ]
    assert second.events[0] == ("search_started", {"total": 4, "done": 2})
    assert set(first.trials()[0].params) == {"model.width", "model.dropout", "train.batch_size"}
    assert [e for e in second.events if e[0] == "epoch"][0][1] == {
        "number": 5,
        "epoch": 1,
        "epochs": 1,
    }


@pytest.mark.parametrize(("backend", "workers", "postgres"), _cases())
# a search per backend (8 s)
@pytest.mark.slow
def test_every_backend_writes_the_reference_records(
    backend, workers, postgres, reference, tiny_search, tmp_path
):
    storage = _postgres() if postgres else f"sqlite:///{tmp_path / 'b.db'}"
    name = f"conf-{uuid.uuid4().hex[:8]}"  # a server database outlives the test: a new study
    _search(backend, workers, storage, tiny_search, 2, study=name)
    study = _search(backend, workers, storage, tiny_search, 4, study=name)
    records = _records(study)
    assert trial_counts(study).done == 4
    if workers > 1:  # parallel workers finish in either order: compare by trial number
        records.sort(key=lambda r: r[0])
    assert records == reference[0]


def test_backends_are_registered_and_take_only_their_own_options():
    assert list_backends() == ["optuna", "ray"]
    assert BACKENDS.get("ray").name == "ray"
    assert create_backend("ray", address="auto").address == "auto"
    assert create_backend("optuna", address=None).name == "optuna"  # None: not given
    with pytest.raises(NasAscError, match="search backend 'optuna' does not take address"):
        create_backend("optuna", address="auto")
    with pytest.raises(NasAscError, match="unknown search backend 'dask'; known search backends"):
        create_backend("dask")
