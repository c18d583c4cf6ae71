"""Tests for nas_asc.report.pareto on a small in-memory multi-objective study."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from nas_asc.report.pareto import (
    DEVICES,
    ReportPaths,
    format_pareto_table,
    pareto_frame,
    trials_frame,
    write_report,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_MACS = 30_000_000
MAX_BYTES = 128_000
DISTRIBUTIONS = {
    "model.width": IntDistribution(8, 64, step=4),
    "model.block": CategoricalDistribution(("tfsep", "tfsep_k5")),
    "train.lr": FloatDistribution(1e-3, 2e-2, log=True),
}


def _config(width: int, block: str, lr: float) -> dict:
    return {
        "model": {"width": width, "block": block, "norm": "adaresnorm"},
        "frontend": {"n_mels": 128},
        "train": {"lr": lr, "batch_size": 64},
    }


def _constraints(macs: int, param_bytes: int) -> dict[str, float]:
    return {"macs": float(macs - MAX_MACS), "param_bytes": float(param_bytes - MAX_BYTES)}


def _trained(width: int, acc: float, macs: int, param_bytes: int, block: str = "tfsep"):
    params = {"model.width": width, "model.block": block, "train.lr": 0.005}
    attrs = {
        "status": "trained",
        "params": param_bytes,
        "param_bytes": param_bytes,
        "macs": macs,
        "feasible": True,
        "fp32_accuracy": acc + 0.01,
        "int8_accuracy": acc,
        "int8_log_loss": 1.5 - acc,
        "accuracy_by_device": {d: acc - 0.001 * i for i, d in enumerate(DEVICES)},
        "seen_accuracy": acc + 0.02,
        "unseen_accuracy": acc - 0.05,
        "train_seconds": 12.5,
        "config": _config(width, block, 0.005),
    }
    return create_trial(
        values=[acc, macs, param_bytes],
        params=params,
        distributions=DISTRIBUTIONS,
        user_attrs=attrs,
        constraints=_constraints(macs, param_bytes),
    )


def _infeasible(width: int, macs: int, param_bytes: int, with_constraints: bool = True):
    attrs = {
        "status": "infeasible",
        "params": param_bytes,
        "param_bytes": param_bytes,
        "macs": macs,
        "feasible": False,
        "infeasible_reason": f"param_bytes {param_bytes} > {MAX_BYTES}",
        "config": _config(width, "tfsep", 0.01),
    }
    return create_trial(
        values=[0.0, macs, param_bytes],
        params={"model.width": width, "model.block": "tfsep", "train.lr": 0.01},
        distributions=DISTRIBUTIONS,
        user_attrs=attrs,
        constraints=_constraints(macs, param_bytes) if with_constraints else None,
    )


def _study() -> optuna.Study:
    study = optuna.create_study(
        study_name="report-test", directions=["maximize", "minimize", "minimize"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["int8_accuracy", "macs", "param_bytes"])
    study.set_user_attr(
        "budget", {"name": "dcase2024", "max_param_bytes": MAX_BYTES, "max_macs": MAX_MACS}
    )
    study.add_trial(_trained(16, 0.40, 2_000_000, 12_000))  # 0: Pareto
    study.add_trial(_trained(40, 0.55, 10_220_340, 57_500))  # 1: Pareto
    study.add_trial(_trained(44, 0.50, 12_000_000, 60_000))  # 2: dominated by 1
    study.add_trial(_trained(60, 0.58, 25_000_000, 120_000, "tfsep_k5"))  # 3: Pareto
    study.add_trial(_infeasible(64, 40_000_000, 140_000))  # 4: over both limits
    study.add_trial(_infeasible(8, 1_000_000, 200_000))  # 5: cheap MACs, too many bytes
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"model.width": 20, "model.block": "tfsep", "train.lr": 0.002},
            distributions=DISTRIBUTIONS,
            user_attrs={"status": "failed"},
        )
    )  # 6: failed
    return study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return _study()


def test_trials_frame_columns_and_values(study: optuna.Study) -> None:
    frame = trials_frame(study)
    assert list(frame["trial"]) == list(range(7))
    expected = [
        "trial",
        "state",
        "status",
        "feasible",
        "int8_accuracy",
        "fp32_accuracy",
        "macs",
        "param_bytes",
        "params",
        "seen_accuracy",
        "unseen_accuracy",
        "int8_log_loss",
        "train_seconds",
        *(f"acc_{d}" for d in DEVICES),
    ]
    assert list(frame.columns[: len(expected)]) == expected
    for name in ("model.width", "model.block", "train.lr", "pareto"):
        assert name in frame.columns
    assert frame.columns[-1] == "pareto"

    row = frame.set_index("trial").loc[1]
    assert row["state"] == "COMPLETE" and row["status"] == "trained" and bool(row["feasible"])
    assert row["int8_accuracy"] == pytest.approx(0.55)
    assert row["fp32_accuracy"] == pytest.approx(0.56)
    assert row["macs"] == 10_220_340 and row["param_bytes"] == 57_500
    assert row["acc_a"] == pytest.approx(0.55) and row["acc_s6"] == pytest.approx(0.542)
    assert row["model.width"] == 40 and row["model.block"] == "tfsep"

    infeasible = frame.set_index("trial").loc[4]
    assert infeasible["status"] == "infeasible" and not bool(infeasible["feasible"])
    assert math.isnan(infeasible["int8_accuracy"])
    assert infeasible["macs"] == 40_000_000
    assert "140000" in infeasible["infeasible_reason"]

    failed = frame.set_index("trial").loc[6]
    assert failed["state"] == "FAIL" and failed["status"] == "failed"
    assert pd.isna(failed["macs"]) and pd.isna(failed["feasible"])
    assert list(frame["pareto"]) == [True, True, False, True, False, False, False]


def test_pareto_frame_is_the_non_dominated_feasible_set(study: optuna.Study) -> None:
    front = pareto_frame(study)
    assert list(front["trial"]) == [0, 1, 3]  # sorted by MACs
    assert front["macs"].is_monotonic_increasing
    assert set(front["status"]) == {"trained"}
    assert front["feasible"].all()
    # Optuna's constraint-aware front, by definition.
    assert set(front["trial"]) == {t.number for t in study.best_trials}


def test_pareto_front_ignores_infeasible_trials_without_constraints() -> None:
    study = _study()
    # Marked infeasible by its attributes only: Optuna alone would count it as non-dominated.
    study.add_trial(_infeasible(8, 500_000, 300_000, with_constraints=False))  # 7
    assert 7 in {t.number for t in study.best_trials}
    assert list(pareto_frame(study)["trial"]) == [0, 1, 3]


def test_format_pareto_table(study: optuna.Study) -> None:
    table = format_pareto_table(pareto_frame(study))
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert "trial" in lines[0] and "MACs" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1", "3"]
    assert "10.22 M" in lines[3] and "57.5 kB" in lines[3] and "55.00" in lines[3]
    assert len({len(line) for line in lines}) == 1  # fixed width


def test_format_pareto_table_empty() -> None:
    text = format_pareto_table(pareto_frame(_study()).iloc[:0])
    assert "\n" not in text and "empty" in text


def test_empty_study() -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    assert trials_frame(study).empty
    assert pareto_frame(study).empty
    assert "empty" in format_pareto_table(pareto_frame(study))


def test_write_report(study: optuna.Study, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report"
    paths = write_report(study, out)
    assert isinstance(paths, ReportPaths)
    assert paths.directory == out
    for path in (paths.trials_csv, paths.pareto_csv, paths.pareto_html, paths.index_html):
        assert path.is_file() and path.parent == out
    assert sorted(p.name for p in out.iterdir()) == REPORT_FILES

    trials = pd.read_csv(paths.trials_csv)
    assert list(trials["trial"]) == list(range(7))
    assert list(pd.read_csv(paths.pareto_csv)["trial"]) == [0, 1, 3]

    html = paths.pareto_html.read_text(encoding="utf-8")
    assert "plotly" in html.lower()
    assert len(html) > 1_000_000  # plotly.js is inlined: the page works offline
    for number in range(6):
        assert f"trial {number}" in html
    assert "dcase2024" in html and "infeasible" in html
    assert "model.width = 40" in html  # the configuration is in the hover text

    # Writing again replaces the files in place and leaves no temporary files behind.
    write_report(study, out)
    assert sorted(p.name for p in out.iterdir()) == REPORT_FILES


REPORT_FILES = ["hypervolume.csv", "index.html", "pareto.csv", "pareto.html", "trials.csv"]


def test_index_page_is_self_contained_with_devices_and_hypervolume(study, tmp_path) -> None:
    paths = write_report(study, tmp_path)
    page = paths.index_html.read_text(encoding="utf-8")
    assert page.count("plotly.js v") == 1  # plotly.js inlined once, the page works offline
    assert "<script src=" not in page  # nothing fetched from a network
    for text in ("Pareto front", "per recording device", "s4 (unseen)", "Hypervolume over trials"):
        assert text in page
    assert "reference point: accuracy 10% (chance), 30 M MACs and 128,000 parameter bytes" in page
    history = pd.read_csv(paths.hypervolume_csv)
    # one row per complete trial; the hypervolume never decreases and ends positive
    assert list(history["trial"]) == [t.number for t in study.trials if t.state.name == "COMPLETE"]
    assert history["hypervolume"].is_monotonic_increasing
    assert 0 < history["hypervolume"].iloc[-1] <= 0.9


def test_hypervolume_matches_a_hand_computed_front() -> None:
    from nas_asc.report.hypervolume import hypervolume_history

    s = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    s.set_user_attr(
        "budget", {"name": "dcase2024", "max_macs": MAX_MACS, "max_param_bytes": MAX_BYTES}
    )
    # (acc, MACs, bytes): a box of (0.5 - 0.1) x 0.5 x 0.5 = 0.1, an infeasible trial that adds
    # nothing, then a dominating point: (0.6 - 0.1) x 0.9 x 0.9 = 0.405
    for acc, macs, nbytes in [(0.5, 15e6, 64e3), (0.0, 45e6, 64e3), (0.6, 3e6, 12.8e3)]:
        s.add_trial(
            create_trial(values=[acc, macs, nbytes], constraints=_constraints(macs, nbytes))
        )
    assert hypervolume_history(s)["hypervolume"].tolist() == pytest.approx([0.1, 0.1, 0.405])


def test_pruned_trials_are_drawn_apart_and_never_on_the_front(tmp_path) -> None:
    study = _study()
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"model.width": 20, "model.block": "tfsep", "train.lr": 0.005},
            distributions=DISTRIBUTIONS,
            user_attrs={
                "status": "pruned",
                "macs": 2_000_000,
                "param_bytes": 9_000,
                "last_accuracy": 0.31,
            },
        )
    )
    frame = trials_frame(study)
    row = frame.set_index("trial").loc[7]
    assert row["state"] == "PRUNED" and not row["pareto"]
    assert row["last_accuracy"] == pytest.approx(0.31)
    html = write_report(study, tmp_path).pareto_html.read_text(encoding="utf-8")
    assert "pruned (stopped early" in html and "1 pruned" in html
