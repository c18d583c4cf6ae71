"""Tests for nas_asc.report.pareto on a small in-memory multi-objective study."""

from __future__ import annotations

import math
import re
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
    _protocol_line,
    format_pareto_table,
    pareto_frame,
    rank_agreement_line,
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


def _trained(
    width: int,
    acc: float,
    macs: int,
    param_bytes: int,
    block: str = "tfsep",
    extra: dict | None = None,
    peak: bool = True,
):
    params = {"model.width": width, "model.block": block, "train.lr": 0.005}
    attrs = {
        "status": "trained",
        "params": param_bytes,
        "param_bytes": param_bytes,
        "macs": macs,
        **({"peak_activation_bytes": 4 * param_bytes} if peak else {}),
        "feasible": True,
        "fp32_accuracy": acc + 0.01,
        "int8_accuracy": acc,
        "int8_log_loss": 1.5 - acc,
        "accuracy_by_device": {d: acc - 0.001 * i for i, d in enumerate(DEVICES)},
        "seen_accuracy": acc + 0.02,
        "unseen_accuracy": acc - 0.05,
        "train_seconds": 12.5,
        "config": _config(width, block, 0.005),
        **(extra or {}),
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
        "peak_activation_bytes",
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
    assert row["peak_activation_bytes"] == 4 * 57_500
    assert pd.isna(frame.set_index("trial").loc[4]["peak_activation_bytes"])  # not recorded
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


def test_the_report_and_export_take_the_front_in_one_order() -> None:
    """``front_trials`` (what export, evaluate and finetune take) lists the front as the
    report's table does: by MACs, then parameter bytes, then number; a trial whose ``macs``
    attribute is missing falls back to its objective value, one that is not a number goes last."""
    from nas_asc.study.front import front_trials

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["int8_accuracy", "macs", "param_bytes"])
    study.add_trial(_trained(40, 0.55, 5_000_000, 50_000))  # 0
    study.add_trial(_trained(20, 0.45, 5_000_000, 20_000))  # 1: same MACs, fewer bytes
    study.add_trial(_trained(60, 0.60, 9_000_000, 90_000, extra={"macs": "n/a"}))  # 2: last
    no_attr = _trained(16, 0.40, 2_000_000, 12_000)
    del no_attr.user_attrs["macs"]  # 3: ordered by its objective value, 2,000,000
    study.add_trial(no_attr)
    study.add_trial(_trained(32, 0.45, 5_000_000, 20_000))  # 4: ties 1: by number
    order = [t.number for t in front_trials(study)]
    assert order == [3, 1, 4, 0, 2]
    assert list(pareto_frame(study)["trial"]) == order


def test_pareto_front_ignores_infeasible_trials_without_constraints() -> None:
    study = _study()
    # Marked infeasible by its attributes only: Optuna alone would count it as non-dominated.
    study.add_trial(_infeasible(8, 500_000, 300_000, with_constraints=False))  # 7
    assert 7 in {t.number for t in study.best_trials}
    assert list(pareto_frame(study)["trial"]) == [0, 1, 3]


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


TABLE_HEADER = [
    "trial",
    "val int8 %",
    "test int8 %",
    "MACs",
    "param bytes",
    "test seen %",
    "test unseen %",
]


def test_format_pareto_table(study: optuna.Study) -> None:
    table = format_pareto_table(pareto_frame(study))
    lines = table.splitlines()
    # no test figures: no rank agreement line; peak RAM recorded: its columns and SRAM line
    assert len(lines) == 2 + 3 + 2
    assert _cells(lines[0]) == [*TABLE_HEADER[:5], "peak RAM", "SRAM", *TABLE_HEADER[5:]]
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "3"]
    assert "10.22 M" in lines[3] and "57.5 kB" in lines[3] and "55.00" in lines[3]
    assert "230.0 kB" in lines[3] and "256 KiB" in lines[3]
    assert lines[5] == "" and lines[6].startswith("fit by peak activation RAM")
    assert len({len(line) for line in lines[:5]}) == 1  # fixed width


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


def test_hypervolume_history_equals_optunas_plot_on_a_random_study() -> None:
    """The one hypervolume (Optuna's exact computation over the normalized front) gives what
    Optuna's public ``plot_hypervolume_history`` draws, trial by trial, infeasible and
    dominated trials and points outside the reference box included."""
    import warnings

    import numpy as np

    from nas_asc.report.hypervolume import hypervolume_history

    rng = np.random.default_rng(3)
    s = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    s.set_user_attr(
        "budget", {"name": "dcase2024", "max_macs": MAX_MACS, "max_param_bytes": MAX_BYTES}
    )
    normalized = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for _ in range(60):
        acc = float(rng.uniform(0.0, 0.8))
        macs = float(rng.uniform(0.1, 1.2)) * MAX_MACS
        nbytes = float(rng.uniform(0.1, 1.2)) * MAX_BYTES
        constraints = _constraints(macs, nbytes)
        s.add_trial(create_trial(values=[acc, macs, nbytes], constraints=constraints))
        normalized.add_trial(
            create_trial(values=[acc, macs / MAX_MACS, nbytes / MAX_BYTES], constraints=constraints)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figure = optuna.visualization.plot_hypervolume_history(
            normalized, reference_point=[0.1, 1.0, 1.0]
        )
    ours = hypervolume_history(s)
    assert list(ours["trial"]) == list(range(60))
    assert ours["hypervolume"].tolist() == pytest.approx(list(figure.data[0].y), abs=1e-12)
    assert 0 < ours["hypervolume"].iloc[-1] <= 0.9


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


# --------------------------------------------------------------------------------------------
# Validation split, test fold and seed evaluation
# --------------------------------------------------------------------------------------------

PROTOCOL = {
    "train_split": "fold1",
    "validation": "locations",
    "validation_fraction": 0.2,
    "validation_seed": 0,
    "validation_split": "81b2217e9657d611",
    "fit_clips": 1888,
    "validation_clips": 432,
    "test_clips": 1440,
    "fit_locations": 130,
    "validation_locations": 30,
    "validation_devices": ["a", "b", "c", "s1", "s2", "s3"],
}


def _test_attrs(test: float, unseen: float | None) -> dict:
    return {
        "test_int8_accuracy": test,
        "test_fp32_accuracy": test + 0.01,
        "test_accuracy_by_device": {d: test + 0.001 * i for i, d in enumerate(DEVICES)},
        "test_seen_accuracy": test + 0.02,
        "test_unseen_accuracy": unseen,
        "test_log_loss": 1.2,
        "test_clips": 1440,
    }


EVALUATION = {
    "seeds": 3,
    "int8_accuracy": {"mean": 0.431, "std": 0.012},
    "seen_accuracy": {"mean": 0.45, "std": 0.01},
    "unseen_accuracy": None,
    "accuracy_by_device": {"a": {"mean": 0.5, "std": 0.02}},
    "train_clips": 1888,
    "test_clips": 1440,
}


def _front_study(extras: list[dict | None], protocol: dict | None = PROTOCOL) -> optuna.Study:
    """Three Pareto trials, validation accuracy 0.30, 0.40, 0.50 at growing complexity, with
    ``extras[i]`` added to trial i's attributes; plus one dominated trial without extras. No
    peak activation RAM is recorded unless an extra gives it."""
    study = optuna.create_study(
        study_name="protocol-test", directions=["maximize", "minimize", "minimize"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["int8_accuracy", "macs", "param_bytes"])
    study.set_user_attr(
        "budget", {"name": "dcase2024", "max_param_bytes": MAX_BYTES, "max_macs": MAX_MACS}
    )
    if protocol is not None:
        study.set_user_attr("protocol", protocol)
    points = [(0.30, 2_000_000, 10_000), (0.40, 5_000_000, 20_000), (0.50, 10_000_000, 40_000)]
    for i, (acc, macs, nbytes) in enumerate(points):
        study.add_trial(_trained(16 + 4 * i, acc, macs, nbytes, extra=extras[i], peak=False))
    study.add_trial(_trained(60, 0.35, 20_000_000, 60_000, peak=False))  # 3: dominated by 2
    return study


def test_trials_frame_test_and_evaluation_columns() -> None:
    study = _front_study([{**_test_attrs(0.31, 0.22), "evaluation": EVALUATION}, None, None])
    frame = trials_frame(study)
    new = [
        "test_int8_accuracy",
        "test_fp32_accuracy",
        "test_seen_accuracy",
        "test_unseen_accuracy",
        *(f"test_acc_{d}" for d in DEVICES),
        "eval_int8_mean",
        "eval_int8_std",
        "eval_unseen_mean",
        "eval_unseen_std",
        "eval_seeds",
    ]
    start = list(frame.columns).index("acc_s6") + 1
    assert list(frame.columns[start : start + len(new)]) == new
    for column in new[:-1]:
        assert frame[column].dtype == "float64", column
    assert frame["eval_seeds"].dtype == "Int64"

    measured = frame.set_index("trial").loc[0]
    assert measured["test_int8_accuracy"] == pytest.approx(0.31)
    assert measured["test_fp32_accuracy"] == pytest.approx(0.32)
    assert measured["test_seen_accuracy"] == pytest.approx(0.33)
    assert measured["test_unseen_accuracy"] == pytest.approx(0.22)
    assert measured["test_acc_a"] == pytest.approx(0.31)
    assert measured["test_acc_s6"] == pytest.approx(0.318)
    assert measured["acc_a"] == pytest.approx(0.30)  # the validation figures stay apart
    assert measured["eval_int8_mean"] == pytest.approx(0.431)
    assert measured["eval_int8_std"] == pytest.approx(0.012)
    assert math.isnan(measured["eval_unseen_mean"]) and math.isnan(measured["eval_unseen_std"])
    assert measured["eval_seeds"] == 3

    unmeasured = frame.set_index("trial").loc[1]
    for column in new[:-1]:
        assert math.isnan(unmeasured[column]), column
    assert unmeasured["eval_seeds"] is pd.NA


def test_trials_frame_test_unseen_none_is_nan() -> None:
    frame = trials_frame(_front_study([_test_attrs(0.31, None), None, None]))
    row = frame.set_index("trial").loc[0]
    assert math.isnan(row["test_unseen_accuracy"])
    assert row["test_seen_accuracy"] == pytest.approx(0.33)


def test_format_pareto_table_with_test_figures() -> None:
    study = _front_study([_test_attrs(0.31, 0.22), _test_attrs(0.45, None), None])
    lines = format_pareto_table(pareto_frame(study)).splitlines()
    assert _cells(lines[0]) == TABLE_HEADER
    assert _cells(lines[2]) == ["0", "30.00", "31.00", "2.00 M", "10.0 kB", "33.00", "22.00"]
    assert _cells(lines[3]) == ["1", "40.00", "45.00", "5.00 M", "20.0 kB", "47.00", "-"]
    assert _cells(lines[4]) == ["2", "50.00", "-", "10.00 M", "40.0 kB", "-", "-"]
    assert len({len(line) for line in lines[:5]}) == 1  # fixed width
    assert lines[5:] == [
        "",
        "rank agreement of validation and test int8 accuracy across the front: "
        "Kendall tau = 1.00 from 2 models: too few to tell (p = 1.00; 5 or more models can "
        "show an agreement at p < 0.05)",
    ]


def test_format_pareto_table_eval_column() -> None:
    study = _front_study([{"evaluation": EVALUATION}, None, None])
    lines = format_pareto_table(pareto_frame(study)).splitlines()
    assert _cells(lines[0]) == [*TABLE_HEADER, "eval int8 %"]
    assert _cells(lines[2])[-1] == "43.10 ± 1.20 (3)"
    assert _cells(lines[3])[-1] == "-"
    assert len(lines) == 5  # no test figures: no rank agreement line
    assert len({len(line) for line in lines}) == 1


def test_format_pareto_table_eval_with_one_seed() -> None:
    one = {**EVALUATION, "seeds": 1, "int8_accuracy": {"mean": 0.5, "std": 0.0}}
    lines = format_pareto_table(
        pareto_frame(_front_study([{"evaluation": one}, None, None]))
    ).splitlines()
    assert _cells(lines[2])[-1] == "50.00 ± 0.00 (1)"


def test_rank_agreement_line() -> None:
    # val 0.30 < 0.40 < 0.50; test 0.31, 0.45, 0.40: pairs (0,1) and (0,2) concordant, (1,2)
    # discordant, no ties: tau = (2 - 1) / 3
    study = _front_study(
        [_test_attrs(0.31, None), _test_attrs(0.45, None), _test_attrs(0.40, None)]
    )
    assert rank_agreement_line(pareto_frame(study)) == (
        "rank agreement of validation and test int8 accuracy across the front: "
        "Kendall tau = 0.33 from 3 models: too few to tell (p = 1.00; 5 or more models can "
        "show an agreement at p < 0.05)"
    )


def test_rank_agreement_line_states_significance_from_five_models() -> None:
    # five models ranked alike on both sides: tau = 1, exact two-sided p = 2/5! = 0.017
    vals = [0.30, 0.40, 0.50, 0.45, 0.35]
    frame = pd.DataFrame({"int8_accuracy": vals, "test_int8_accuracy": [v - 0.1 for v in vals]})
    assert rank_agreement_line(frame) == (
        "rank agreement of validation and test int8 accuracy across the front: "
        "Kendall tau = 1.00 (5 models, p = 0.02)"
    )


def test_rank_agreement_line_one_measured_model() -> None:
    study = _front_study([None, _test_attrs(0.45, None), None])
    assert rank_agreement_line(pareto_frame(study)) == (
        "rank agreement of validation and test int8 accuracy across the front: "
        "Kendall tau needs at least 2 measured models (1 measured)"
    )


def test_rank_agreement_line_without_test_figures(study: optuna.Study) -> None:
    assert rank_agreement_line(pareto_frame(study)) == ""
    assert rank_agreement_line(pareto_frame(_front_study([None, None, None]))) == ""
    assert rank_agreement_line(pareto_frame(study).iloc[:0]) == ""


def test_protocol_line() -> None:
    study = _front_study([None, None, None])
    assert _protocol_line(study) == (
        "validation: 432 clips of 30 locations (0.2 of the training locations, seed 0) from "
        "training split fold1; test fold: 1440 clips"
    )
    by_file = {**PROTOCOL, "validation": "file", "validation_file": "/data/val.tsv"}
    del by_file["validation_fraction"], by_file["validation_seed"]
    assert _protocol_line(_front_study([None, None, None], protocol=by_file)) == (
        "validation: 432 clips of 30 locations (from /data/val.tsv) from training split fold1; "
        "test fold: 1440 clips"
    )
    assert _protocol_line(_front_study([None, None, None], protocol=None)) == "-"


def test_index_page_protocol_rank_agreement_and_test_columns(tmp_path: Path) -> None:
    extras = [
        {**_test_attrs(0.31, 0.22), "evaluation": EVALUATION},
        _test_attrs(0.45, 0.30),
        _test_attrs(0.40, 0.28),
    ]
    paths = write_report(_front_study(extras), tmp_path)
    page = paths.index_html.read_text(encoding="utf-8")
    assert (
        "<tr><th>protocol</th><td>validation: 432 clips of 30 locations (0.2 of the training "
        "locations, seed 0) from training split fold1; test fold: 1440 clips</td></tr>"
    ) in page
    assert (
        "<tr><th>rank agreement</th><td>rank agreement of validation and test int8 accuracy "
        "across the front: Kendall tau = 0.33 from 3 models: too few to tell (p = 1.00; 5 or "
        "more models can show an agreement at p &lt; 0.05)</td></tr>"
    ) in page
    assert "chosen\non the validation split (held-out locations of the training data)" in page
    assert "test fold\n(fold1_evaluate; devices s4-s6 never seen in training)" in page
    header = [
        "trial",
        "val int8 %",
        "test int8 %",
        "val fp32 %",
        "MACs",
        "param bytes",
        "params",
        "test seen %",
        "test unseen %",
        "eval int8 %",
    ]
    assert "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" in page
    assert "<td>43.10 ± 1.20 (3)</td>" in page
    assert "per recording device on the test fold" in page
    pareto = pd.read_csv(paths.pareto_csv)
    assert list(pareto["trial"]) == [0, 1, 2]
    assert pareto["test_int8_accuracy"].tolist() == pytest.approx([0.31, 0.45, 0.40])
    assert pareto["eval_seeds"].tolist()[0] == 3
    assert "test_acc_s4" in pd.read_csv(paths.trials_csv).columns


def test_index_page_of_an_older_study(study: optuna.Study, tmp_path: Path) -> None:
    page = write_report(study, tmp_path).index_html.read_text(encoding="utf-8")
    assert "<tr><th>protocol</th><td>-</td></tr>" in page
    assert "<th>rank agreement</th>" not in page
    assert "<th>eval int8 %</th>" not in page
    assert "per recording device on the validation split" in page


def test_the_front_says_which_models_fit_which_sram(tmp_path: Path) -> None:
    from nas_asc.report.pareto import sram_class, sram_fit_line

    peaks = [{"peak_activation_bytes": 60_000}, {"peak_activation_bytes": 131_072}, None]
    study = _front_study(peaks)
    frame = pareto_frame(study)
    lines = format_pareto_table(frame).splitlines()
    assert _cells(lines[0]) == [*TABLE_HEADER[:5], "peak RAM", "SRAM", *TABLE_HEADER[5:]]
    assert _cells(lines[2])[5:7] == ["60.0 kB", "64 KiB"]
    assert _cells(lines[3])[5:7] == ["131.1 kB", "128 KiB"]  # 131,072 B = 128 KiB exactly
    assert _cells(lines[4])[5:7] == ["-", "-"]  # not recorded
    assert lines[-1] == (
        "fit by peak activation RAM (activations alone; the stack and audio buffers need room "
        "too): 64 KiB: trial 0; 128 KiB: trials 0, 1; 256 KiB: trials 0, 1"
    )
    assert sram_fit_line(frame) == lines[-1]
    assert [sram_class(v) for v in (65_536, 65_537, 262_144, 262_145, None)] == [
        "64 KiB",
        "128 KiB",
        "256 KiB",
        "> 256 KiB",
        "-",
    ]
    html = write_report(study, tmp_path).index_html.read_text(encoding="utf-8")
    assert "vs peak activation RAM" in html and "64 KiB: trial 0" in html
