"""The study's record: written in one place, read back one way, tolerant of foreign studies."""

from __future__ import annotations

import optuna
import pytest

from nas_asc.budget import DEFAULT_BUDGET, parse_budget
from nas_asc.errors import NasAscError
from nas_asc.study.record import (
    KEYS,
    StudyRecord,
    add_search_time,
    recorded_budget,
    require_budget,
    write_search_settings,
)


def _study(name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, directions=["maximize", "minimize", "minimize"])


def _write(study: optuna.Study, **changes) -> None:
    settings = dict(
        budget=DEFAULT_BUDGET,
        space_definition={"name": "tiny", "model": "tfsepnet"},
        space="tiny",
        data="/data/tau22 (fold1)",
        seed=7,
        sampler="tpe",
        pruner="dominance",
        model_revision=2,
        artifact_dir="/artifacts/s",
        data_info={"root": "/data/tau22", "train_split": "fold1", "fingerprint": "abc"},
        protocol={"validation": "locations", "validation_clips": 12},
        warm_start={"enabled": True, "queued": [], "skipped": {}},
    )
    write_search_settings(study, **{**settings, **changes})


def test_what_is_written_reads_back_typed_and_in_the_stored_format():
    study = _study()
    _write(study)
    record = StudyRecord.of(study)
    assert record == StudyRecord(
        space="tiny",
        space_definition={"name": "tiny", "model": "tfsepnet"},
        budget=DEFAULT_BUDGET.to_dict(),
        seed=7,
        data="/data/tau22 (fold1)",
        data_info={"root": "/data/tau22", "train_split": "fold1", "fingerprint": "abc"},
        protocol={"validation": "locations", "validation_clips": 12},
        artifact_dir="/artifacts/s",
        warm_start={"enabled": True, "queued": [], "skipped": {}},
        model_revision=2,
        sampler="tpe",
        pruner="dominance",
    )
    assert record.settled and record.family == "tfsepnet" and record.fingerprint == "abc"
    assert record.limits == DEFAULT_BUDGET == require_budget(study)
    # plain JSON values under the names earlier versions wrote: old studies still open
    assert set(study.user_attrs) == set(KEYS) - {"search_seconds", "search_runs"}
    assert study.user_attrs["budget"] == DEFAULT_BUDGET.to_dict()
    assert list(study.user_attrs)[-1] == "pruner"


def test_a_second_worker_keeps_what_it_does_not_write():
    study = _study()
    _write(study)
    _write(study, artifact_dir=None, data_info=None, protocol=None, warm_start=None)
    record = StudyRecord.of(study)
    assert record.artifact_dir == "/artifacts/s" and record.fingerprint == "abc"
    assert record.protocol is not None and record.warm_start is not None


def test_search_time_adds_up_over_runs():
    study = _study()
    assert (StudyRecord.of(study).search_seconds, StudyRecord.of(study).search_runs) == (0.0, 0)
    assert add_search_time(study, 1.5) == (1.5, 1)
    assert add_search_time(study, 2.0) == (3.5, 2)
    assert study.user_attrs["search_seconds"] == 3.5 and study.user_attrs["search_runs"] == 2


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, StudyRecord()),  # a study nas-asc did not make
        (
            {"space": 3, "seed": "7", "budget": [1, 2], "data_info": "x", "protocol": 1},
            StudyRecord(),  # wrongly typed values read as not recorded
        ),
        ({"seed": 7.0, "search_seconds": float("nan"), "search_runs": True}, StudyRecord(seed=7)),
        ({"space": "tiny"}, StudyRecord(space="tiny")),
    ],
    ids=["empty", "wrong-types", "numbers", "space-only"],
)
def test_foreign_and_malformed_records_read_as_not_recorded(attrs, expected):
    study = _study()
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    assert StudyRecord.of(study) == expected


def test_a_budget_that_is_not_one_is_no_budget_and_one_line_where_one_is_needed():
    study = _study("foreign")
    study.set_user_attr("budget", {"name": "x", "max_macs": -1})
    assert StudyRecord.of(study).budget == {"name": "x", "max_macs": -1}
    assert recorded_budget(study) is None
    with pytest.raises(NasAscError, match=r"^study 'foreign' records no budget; it was not run"):
        require_budget(study)
    study.set_user_attr("budget", parse_budget("dcase2025").to_dict())
    assert recorded_budget(study) == parse_budget("dcase2025")
