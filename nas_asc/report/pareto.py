"""Trial table, Pareto table and an interactive Pareto plot from an Optuna study.

The study maximises int8 accuracy and minimises MACs and parameter bytes
(``study.set_metric_names(["int8_accuracy", "macs", "param_bytes"])``). Each trial's user
attributes carry its status (``trained``, ``infeasible`` or ``failed``), complexity, accuracies
(fractions in [0, 1]) and sampled config; infeasible trials are complete with values
``(0.0, macs, param_bytes)`` and positive constraints, so Optuna's constraint-aware
``study.best_trials`` already leaves them out of the Pareto front.

The objectives and accuracies are measured on the validation split (held-out locations of the
training data, study attribute ``protocol``). At the end of a search the Pareto trials are
measured once on the test fold (``test_*`` user attributes, :mod:`nas_asc.search.holdout`), and
``nas-asc evaluate`` may add seed statistics (``evaluation``); studies measured before lack them.

Example:
    >>> paths = write_report(study, "reports/tfsepnet")  # doctest: +SKIP
    >>> print(format_pareto_table(pareto_frame(study)))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from nas_asc.progress import format_bytes, format_macs
from nas_asc.study.front import (
    as_number,
    front_trials,
    kendall_test,
    metric_values,
    pareto_trials,
    recorded_figure,
    trial_feasible,
    trial_status,
)
from nas_asc.study.record import StudyRecord

__all__ = [
    "DEVICES",
    "ReportPaths",
    "format_pareto_table",
    "SRAM_SIZES",
    "sram_class",
    "sram_fit_line",
    "pareto_frame",
    "rank_agreement_line",
    "trials_frame",
    "write_report",
]

DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")

_INT_COLUMNS = ("macs", "param_bytes", "params", "peak_activation_bytes")
_FLOAT_COLUMNS = (
    "int8_accuracy",
    "fp32_accuracy",
    "seen_accuracy",
    "unseen_accuracy",
    "int8_log_loss",
    "train_seconds",
)
_TEST_COLUMNS = (
    "test_int8_accuracy",
    "test_fp32_accuracy",
    "test_seen_accuracy",
    "test_unseen_accuracy",
)
_EVAL_COLUMNS = ("eval_int8_mean", "eval_int8_std", "eval_unseen_mean", "eval_unseen_std")
_BASE_COLUMNS = (
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
)


# --------------------------------------------------------------------------------------------
# Trial bookkeeping
# --------------------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _evaluation_row(evaluation: Any) -> dict[str, Any]:
    """The ``eval_*`` columns of a trial's ``evaluation`` attribute (mean and std over seeds)."""
    evaluation = _mapping(evaluation)
    int8 = _mapping(evaluation.get("int8_accuracy"))
    unseen = _mapping(evaluation.get("unseen_accuracy"))
    seeds = as_number(evaluation.get("seeds"))
    return {
        "eval_int8_mean": as_number(int8.get("mean")),
        "eval_int8_std": as_number(int8.get("std")),
        "eval_unseen_mean": as_number(unseen.get("mean")),
        "eval_unseen_std": as_number(unseen.get("std")),
        "eval_seeds": seeds,
    }


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial of ``study`` (all states).

    Args:
        study: A multi-objective study written by the search.

    Returns:
        Columns ``trial``, ``state``, ``status``, ``feasible``, ``int8_accuracy``,
        ``fp32_accuracy``, ``macs``, ``param_bytes``, ``params``, ``peak_activation_bytes``
        (int8 activation bytes alive at once; missing in studies of earlier versions),
        ``seen_accuracy``,
        ``unseen_accuracy``, ``int8_log_loss``, ``train_seconds``, ``acc_<device>`` (devices
        a, b, c, s1..s6, then any others; these are the validation figures), the test-fold
        figures ``test_int8_accuracy``, ``test_fp32_accuracy``, ``test_seen_accuracy``,
        ``test_unseen_accuracy`` and ``test_acc_<device>`` (the same devices), the seed
        statistics of ``nas-asc evaluate`` ``eval_int8_mean``, ``eval_int8_std``,
        ``eval_unseen_mean``, ``eval_unseen_std`` and ``eval_seeds``, then
        ``infeasible_reason``, ``last_accuracy``, one column per sampled parameter (dotted
        names, in first-seen order) and ``pareto``. Missing numbers are NaN (``<NA>`` in the
        integer columns), a missing status or feasibility is ``<NA>``.
    """
    trials = study.get_trials(deepcopy=False)
    pareto = {t.number for t in pareto_trials(study)} if trials else set()
    devices = list(DEVICES)
    param_names: list[str] = []
    for trial in trials:
        for key in ("accuracy_by_device", "test_accuracy_by_device"):
            by_device = _mapping(trial.user_attrs.get(key))
            devices += sorted({str(d) for d in by_device} - set(devices))
        param_names += [name for name in trial.params if name not in param_names]

    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        values = metric_values(study, trial)
        row: dict[str, Any] = {
            "trial": trial.number,
            "state": trial.state.name,
            "status": trial_status(trial),
            "feasible": trial_feasible(trial),
        }
        for column in _BASE_COLUMNS[4:]:
            if column != "int8_accuracy":  # complexity objectives, when the attribute is missing
                row[column] = recorded_figure(study, trial, column, values)
            elif attrs.get(column) is None and trial_status(trial) == "trained":
                row[column] = as_number(values.get(column))
            else:
                row[column] = as_number(attrs.get(column))
        by_device = _mapping(attrs.get("accuracy_by_device"))
        for device in devices:
            row[f"acc_{device}"] = as_number(by_device.get(device))
        for column in _TEST_COLUMNS:
            row[column] = as_number(attrs.get(column))
        test_by_device = _mapping(attrs.get("test_accuracy_by_device"))
        for device in devices:
            row[f"test_acc_{device}"] = as_number(test_by_device.get(device))
        row.update(_evaluation_row(attrs.get("evaluation")))
        reason = attrs.get("infeasible_reason")
        row["infeasible_reason"] = None if reason is None else str(reason)
        row["last_accuracy"] = as_number(attrs.get("last_accuracy"))
        for name in param_names:
            row[name] = trial.params.get(name)
        row["pareto"] = trial.number in pareto
        rows.append(row)

    float_columns = [
        *_FLOAT_COLUMNS,
        "last_accuracy",
        *(f"acc_{d}" for d in devices),
        *_TEST_COLUMNS,
        *(f"test_acc_{d}" for d in devices),
        *_EVAL_COLUMNS,
    ]
    columns = [
        *_BASE_COLUMNS,
        *(f"acc_{d}" for d in devices),
        *_TEST_COLUMNS,
        *(f"test_acc_{d}" for d in devices),
        *_EVAL_COLUMNS,
        "eval_seeds",
        "infeasible_reason",
        "last_accuracy",
        *param_names,
        "pareto",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["trial"] = frame["trial"].astype("int64")
    for column in (*_INT_COLUMNS, "eval_seeds"):
        frame[column] = frame[column].astype("float64").round().astype("Int64")
    for column in float_columns:
        frame[column] = frame[column].astype("float64")
    frame["feasible"] = frame["feasible"].astype("boolean")
    frame["pareto"] = frame["pareto"].astype(bool)
    return frame


def pareto_frame(study: optuna.Study) -> pd.DataFrame:
    """The Pareto-optimal, feasible, trained trials, sorted by MACs then parameter bytes.

    Args:
        study: A multi-objective study written by the search.

    Returns:
        The rows of ``trials_frame(study)`` with ``pareto`` true, re-indexed from 0.
    """
    frame = trials_frame(study).set_index("trial", drop=False)
    order = [t.number for t in front_trials(study)]
    return frame.loc[order].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _present(value: Any) -> Any:
    """``value``, or None where pandas marks it missing (``pd.NA`` of a nullable column)."""
    return None if _missing(value) else value


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # containers
        return False


def _known_false(value: Any) -> bool:
    return not _missing(value) and not bool(value)


def _status_of(row: Mapping[str, Any]) -> str | None:
    status = row.get("status")
    return None if _missing(status) else str(status)


def _percent(value: Any) -> str:
    return "-" if _missing(value) else f"{100.0 * float(value):.2f}"


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]`` as floats, all NaN when the frame lacks the column (an older study)."""
    if name not in frame:
        return pd.Series(math.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[name], errors="coerce").astype("float64")


def _has_any(frame: pd.DataFrame, name: str) -> bool:
    return frame is not None and bool(_column(frame, name).notna().any())


def format_evaluation(mean: Any, std: Any, seeds: Any) -> str:
    """Mean and std over seeds in percent with the seed count, e.g. ``43.10 ± 1.20 (3)``.

    ``-`` when the mean is missing; the std or count is left out when it is missing.
    """
    if _missing(mean):
        return "-"
    text = _percent(mean)
    if not _missing(std):
        text += f" ± {_percent(std)}"
    if not _missing(seeds):
        text += f" ({int(seeds)})"
    return text


def rank_agreement_line(frame: pd.DataFrame) -> str:
    """How well the validation ranking of the front predicts its test ranking.

    Args:
        frame: A ``pareto_frame`` (``int8_accuracy`` on the validation split,
            ``test_int8_accuracy`` on the test fold).

    Returns:
        One line with Kendall's tau-b over the rows that have both figures, e.g.
        ``rank agreement of validation and test int8 accuracy across the front: Kendall tau =
        0.60 (5 models)``; a line saying tau needs two measured models when fewer have both;
        ``""`` when no row has a test figure (a study measured before the test fold was).
    """
    if frame is None or not _has_any(frame, "test_int8_accuracy"):
        return ""
    both = pd.DataFrame(
        {"val": _column(frame, "int8_accuracy"), "test": _column(frame, "test_int8_accuracy")}
    ).dropna()
    prefix = "rank agreement of validation and test int8 accuracy across the front: "
    n = len(both)
    if n < 2:
        return prefix + f"Kendall tau needs at least 2 measured models ({n} measured)"
    test = kendall_test(both["val"].tolist(), both["test"].tolist())
    if test is None:
        return prefix + f"Kendall tau undefined, equal accuracies on one side ({n} models)"
    tau, p = test
    if n < MIN_RANKED:
        # with n < 5 models even a perfect agreement has p >= 0.08: the figure means nothing
        return prefix + (
            f"Kendall tau = {tau:.2f} from {n} models: too few to tell (p = {p:.2f}; "
            f"{MIN_RANKED} or more models can show an agreement at p < 0.05)"
        )
    return prefix + f"Kendall tau = {tau:.2f} ({n} models, p = {p:.2f})"


#: The fewest models whose perfect rank agreement is significant (two-sided exact p = 0.017)
MIN_RANKED = 5


def _table_columns(frame: pd.DataFrame) -> list[tuple[str, Any]]:
    """The validation, test and (when any) seed-evaluation columns shared by both tables."""
    columns: list[tuple[str, Any]] = [
        ("trial", lambda r: str(int(r["trial"]))),
        ("val int8 %", lambda r: _percent(r.get("int8_accuracy"))),
        ("test int8 %", lambda r: _percent(r.get("test_int8_accuracy"))),
        ("MACs", lambda r: format_macs(r.get("macs"))),
        ("param bytes", lambda r: format_bytes(r.get("param_bytes"))),
        ("test seen %", lambda r: _percent(r.get("test_seen_accuracy"))),
        ("test unseen %", lambda r: _percent(r.get("test_unseen_accuracy"))),
    ]
    if _has_any(frame, "peak_activation_bytes"):  # studies recorded before it have none
        columns[5:5] = [
            ("peak RAM", lambda r: format_bytes(_present(r.get("peak_activation_bytes")))),
            ("SRAM", lambda r: sram_class(r.get("peak_activation_bytes"))),
        ]
    if _has_any(frame, "eval_int8_mean"):
        columns.append(
            (
                "eval int8 %",
                lambda r: format_evaluation(
                    r.get("eval_int8_mean"), r.get("eval_int8_std"), r.get("eval_seeds")
                ),
            )
        )
    return columns


#: SRAM sizes of Cortex-M4 class parts (bytes): the report says which Pareto models fit which.
SRAM_SIZES = (64 * 1024, 128 * 1024, 256 * 1024)


def sram_class(peak: Any) -> str:
    """The smallest of :data:`SRAM_SIZES` that holds ``peak`` activation bytes (``64 KiB``),
    ``> 256 KiB`` when none does, ``-`` when unknown. Activations alone: the stack, the audio
    buffer and the front end need room beside them."""
    value = as_number(peak)
    if not math.isfinite(value):
        return "-"
    for size in SRAM_SIZES:
        if value <= size:
            return f"{size // 1024} KiB"
    return f"> {SRAM_SIZES[-1] // 1024} KiB"


def sram_fit_line(frame: pd.DataFrame) -> str:
    """Which models of ``frame`` (a Pareto frame) fit which SRAM size by their peak activation
    RAM, e.g. ``64 KiB: trials 4, 6; 128 KiB: trials 4, 6, 13; 256 KiB: trials 4, 6, 13``;
    empty when no row has the figure."""
    if frame is None or len(frame) == 0 or not _has_any(frame, "peak_activation_bytes"):
        return ""
    parts = []
    for size in SRAM_SIZES:
        fits = [
            int(r["trial"])
            for _, r in frame.iterrows()
            if math.isfinite(as_number(r.get("peak_activation_bytes")))
            and as_number(r.get("peak_activation_bytes")) <= size
        ]
        listed = ", ".join(map(str, sorted(fits))) if fits else "none"
        parts.append(f"{size // 1024} KiB: {'trial' if len(fits) == 1 else 'trials'} {listed}")
    return (
        "fit by peak activation RAM (activations alone; the stack and audio buffers need room "
        "too): " + "; ".join(parts)
    )


def format_pareto_table(frame: pd.DataFrame) -> str:
    """A fixed-width terminal table of a ``pareto_frame``.

    Args:
        frame: Rows with ``trial``, ``int8_accuracy`` (validation), ``macs``, ``param_bytes``
            and, when present, the test-fold figures ``test_int8_accuracy``,
            ``test_seen_accuracy``, ``test_unseen_accuracy`` and the seed statistics
            ``eval_int8_mean``, ``eval_int8_std``, ``eval_seeds``.

    Returns:
        The table (header ``trial``, ``val int8 %``, ``test int8 %``, ``MACs``,
        ``param bytes``, ``test seen %``, ``test unseen %``, then ``eval int8 %`` when any row
        was evaluated; a rule; one line per trial; ``-`` for a missing figure), then, after a
        blank line, the ``rank_agreement_line`` when there is one; or one line saying the front
        is empty.
    """
    if frame is None or len(frame) == 0:
        return "Pareto front: empty (no trained trial within the budget yet)"
    columns = _table_columns(frame)
    header = [name for name, _ in columns]
    rows = [[cell(row) for _, cell in columns] for _, row in frame.iterrows()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    for extra in (sram_fit_line(frame), rank_agreement_line(frame)):
        if extra:
            lines += ["", extra]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportPaths:
    """Where ``write_report`` put its files.

    Attributes:
        directory: The report directory.
        trials_csv: Every trial (``trials_frame``).
        pareto_csv: The Pareto-optimal trials (``pareto_frame``).
        pareto_html: The self-contained interactive Pareto plot.
        hypervolume_csv: Normalized hypervolume after each complete trial.
        index_html: The self-contained report page (summary, Pareto table, all figures).
    """

    directory: Path
    trials_csv: Path
    pareto_csv: Path
    pareto_html: Path
    hypervolume_csv: Path
    index_html: Path


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _budget(study: optuna.Study) -> dict[str, Any]:
    """The study's budget (``name``, ``max_macs``, ``max_param_bytes``, and
    ``max_activation_bytes`` when it limits RAM); unusable parts dropped."""
    raw = StudyRecord.of(study).budget
    if raw is None:
        return {}
    budget: dict[str, Any] = {"name": str(raw.get("name") or "budget")}
    for key in ("max_macs", "max_param_bytes", "max_activation_bytes"):
        value = as_number(raw.get(key))
        if math.isfinite(value) and value > 0:
            budget[key] = value
    return budget


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(config, Mapping):
        return [(prefix, config)] if prefix else []
    items: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            items += _flatten(value, name)
        else:
            items.append((name, value))
    return items


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _hover(trial: FrozenTrial, row: Mapping[str, Any]) -> str:
    status = _status_of(row) or trial.state.name.lower()
    lines = [f"<b>trial {trial.number}</b> ({status})"]
    if not _missing(row.get("int8_accuracy")) and status == "trained":
        lines.append(f"int8 accuracy: {_percent(row['int8_accuracy'])} %")
        if not _missing(row.get("fp32_accuracy")):
            lines.append(f"fp32 accuracy: {_percent(row['fp32_accuracy'])} %")
        if not _missing(row.get("test_int8_accuracy")):
            lines.append(f"test fold int8 accuracy: {_percent(row['test_int8_accuracy'])} %")
    lines.append(f"MACs: {format_macs(row.get('macs'))}")
    lines.append(f"parameter bytes: {format_bytes(row.get('param_bytes'))}")
    reason = row.get("infeasible_reason")
    if not _missing(reason) and reason:
        lines.append(f"infeasible: {reason}")
    config = trial.user_attrs.get("config")
    items = _flatten(config) if isinstance(config, Mapping) else list(trial.params.items())
    if items:
        lines.append("<i>configuration</i>")
        lines += [f"{name} = {_format_value(value)}" for name, value in items]
    return "<br>".join(str(line).replace("\n", " ") for line in lines)


def _staircase(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The best accuracy reachable at or below each complexity: the 2-D front as a staircase."""
    best = -math.inf
    out_x: list[float] = []
    out_y: list[float] = []
    for x, y in sorted(zip(xs, ys, strict=True), key=lambda p: (p[0], -p[1])):
        if y > best:
            best = y
            out_x.append(x)
            out_y.append(y)
    return out_x, out_y


def _figure(study: optuna.Study, frame: pd.DataFrame) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    budget = _budget(study)
    axes = [("macs", "MACs", "max_macs"), ("param_bytes", "parameter bytes", "max_param_bytes")]
    if _has_any(frame, "peak_activation_bytes"):
        axes.append(("peak_activation_bytes", "peak activation RAM, bytes", "max_activation_bytes"))

    records = frame.to_dict("records")
    trained = [
        r
        for r in records
        if r["state"] == "COMPLETE"
        and _status_of(r) in ("trained", None)
        and not _known_false(r["feasible"])
        and not _missing(r["int8_accuracy"])
    ]
    front = [r for r in trained if r["pareto"]]
    others = [r for r in trained if not r["pareto"]]
    infeasible = [
        r
        for r in records
        if (_status_of(r) == "infeasible" or _known_false(r["feasible"]))
        and not _missing(r["macs"])
        and not _missing(r["param_bytes"])
    ]
    pruned = [
        r
        for r in records
        if (r["state"] == "PRUNED" or _status_of(r) == "pruned")
        and not _missing(r["macs"])
        and not _missing(r["param_bytes"])
    ]
    n_failed = sum(1 for r in records if _status_of(r) == "failed" or r["state"] == "FAIL")

    titles = {
        "macs": "validation int8 accuracy vs MACs",
        "param_bytes": "vs parameter bytes",
        "peak_activation_bytes": "vs peak activation RAM (SRAM sizes dotted)",
    }
    fig = make_subplots(
        rows=1,
        cols=len(axes),
        shared_yaxes=True,
        horizontal_spacing=0.05,
        subplot_titles=[titles[key] for key, _, _ in axes],
    )
    all_rows = {"others": others, "front": front, "infeasible": infeasible, "pruned": pruned}
    accuracies = [100.0 * r["int8_accuracy"] for r in trained]
    y_top = max([*accuracies, 10.0]) * 1.08
    for col, (key, label, budget_key) in enumerate(axes, start=1):
        show = col == 1
        # the RAM panel leaves out trials without the figure (untraceable, or recorded before)
        others, front, infeasible, pruned = (
            [r for r in rows if not _missing(r[key])] for rows in all_rows.values()
        )

        def xs(rows: list[dict], key: str = key) -> list[float]:
            return [float(r[key]) for r in rows]

        def hovers(rows: list[dict]) -> list[str]:
            return [_hover(trials[r["trial"]], r) for r in rows]

        if others:
            fig.add_trace(
                go.Scatter(
                    x=xs(others),
                    y=[100.0 * r["int8_accuracy"] for r in others],
                    mode="markers",
                    name="trained, dominated",
                    legendgroup="dominated",
                    showlegend=show,
                    marker={"color": "#7f9cc4", "size": 8, "opacity": 0.7},
                    hovertext=hovers(others),
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        if front:
            step_x, step_y = _staircase(xs(front), [100.0 * r["int8_accuracy"] for r in front])
            fig.add_trace(
                go.Scatter(
                    x=step_x,
                    y=step_y,
                    mode="lines",
                    line={"shape": "hv", "color": "#d62728", "width": 2},
                    name="Pareto front (best accuracy within complexity)",
                    legendgroup="front-line",
                    showlegend=show,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=xs(front),
                    y=[100.0 * r["int8_accuracy"] for r in front],
                    mode="markers+text",
                    text=[str(r["trial"]) for r in front],
                    textposition="top center",
                    name="Pareto-optimal trial",
                    legendgroup="front",
                    showlegend=show,
                    marker={
                        "color": "#d62728",
                        "size": 11,
                        "symbol": "diamond",
                        "line": {"color": "black", "width": 1},
                    },
                    hovertext=hovers(front),
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        if infeasible:
            fig.add_trace(
                go.Scatter(
                    x=xs(infeasible),
                    y=[0.0] * len(infeasible),
                    mode="markers",
                    name="infeasible (over budget, not trained; drawn at 0 %)",
                    legendgroup="infeasible",
                    showlegend=show,
                    marker={"color": "#7f7f7f", "size": 9, "symbol": "x"},
                    hovertext=hovers(infeasible),
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        if pruned:
            fig.add_trace(
                go.Scatter(
                    x=xs(pruned),
                    y=[
                        0.0 if _missing(r["last_accuracy"]) else 100.0 * r["last_accuracy"]
                        for r in pruned
                    ],
                    mode="markers",
                    name="pruned (stopped early; last accuracy measured)",
                    legendgroup="pruned",
                    showlegend=show,
                    marker={
                        "color": "rgba(0,0,0,0)",
                        "size": 9,
                        "symbol": "triangle-down",
                        "line": {"color": "#ff7f0e", "width": 1.5},
                    },
                    hovertext=hovers(pruned),
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        if key == "peak_activation_bytes":
            for size in SRAM_SIZES:
                fig.add_trace(
                    go.Scatter(
                        x=[size, size],
                        y=[0.0, y_top],
                        mode="lines+text",
                        text=[f"{size // 1024} KiB", ""],  # at the foot: the budget's is on top
                        textposition="bottom right",
                        line={"color": "#2ca02c", "dash": "dot", "width": 1},
                        name="SRAM size (activations alone)",
                        legendgroup="sram",
                        showlegend=size == SRAM_SIZES[0],
                        hovertext=f"{size // 1024} KiB SRAM ({size:,} bytes)",
                        hoverinfo="text",
                    ),
                    row=1,
                    col=col,
                )
        limit = budget.get(budget_key)
        if limit is not None:
            pretty = format_macs(limit) + " MACs" if key == "macs" else format_bytes(limit)
            fig.add_trace(
                go.Scatter(
                    x=[limit, limit],
                    y=[0.0, y_top],
                    mode="lines+text",
                    text=["", f"{budget['name']}: {pretty}"],
                    textposition="top left",
                    line={"color": "black", "dash": "dash", "width": 1.5},
                    name=f"budget {budget['name']}",
                    legendgroup="budget",
                    showlegend=col == 1,
                    hovertext=f"budget {budget['name']}: {pretty}",
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=f"{label} (log scale)", type="log", row=1, col=col)
    fig.update_yaxes(
        title_text="int8 accuracy, validation (%)", range=[-3.0, y_top * 1.05], row=1, col=1
    )

    title = f"Study {study.study_name}: {len(trained)} trained, "
    title += f"{len(all_rows['front'])} Pareto-optimal, {len(all_rows['infeasible'])} infeasible, "
    title += f"{len(all_rows['pruned'])} pruned, {n_failed} failed"
    if budget:
        title += f" (budget {budget['name']})"
    fig.update_layout(
        title={"text": title},
        template="plotly_white",
        hoverlabel={"align": "left"},
        legend={"orientation": "h", "y": -0.18},
        height=620,
    )
    return fig


def _html_table(front: pd.DataFrame) -> str:
    if len(front) == 0:
        return "<p>The Pareto front is empty: no trained trial within the budget yet.</p>"
    columns = _table_columns(front)  # plus validation fp32 accuracy and the parameter count
    after = {name: i for i, (name, _) in enumerate(columns)}
    columns.insert(
        after["param bytes"] + 1,
        ("params", lambda r: "-" if _missing(r.get("params")) else f"{int(r['params']):,}"),
    )
    columns.insert(
        after["test int8 %"] + 1, ("val fp32 %", lambda r: _percent(r.get("fp32_accuracy")))
    )
    header = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    lines = [f"<table><thead><tr>{header}</tr></thead>", "<tbody>"]
    for _, row in front.iterrows():
        cells = [cell(row) for _, cell in columns]
        lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _protocol_line(study: optuna.Study) -> str:
    """The study's evaluation protocol in words, e.g. ``validation: 432 clips of 30 locations
    (0.2 of the training locations, seed 0) from training split fold1; test fold: 1440 clips``;
    ``-`` when the study does not record one."""
    protocol = StudyRecord.of(study).protocol
    if not isinstance(protocol, Mapping):
        return "-"

    def count(key: str) -> str:
        value = as_number(protocol.get(key))
        return "?" if not math.isfinite(value) else f"{value:.0f}"

    if protocol.get("validation") == "file":
        how = f"from {protocol.get('validation_file', 'a file')}"
    else:
        fraction = as_number(protocol.get("validation_fraction"))
        how = "?" if not math.isfinite(fraction) else f"{fraction:g}"
        how += f" of the training locations, seed {protocol.get('validation_seed', '?')}"
    return (
        f"validation: {count('validation_clips')} clips of {count('validation_locations')} "
        f"locations ({how}) from training split {protocol.get('train_split', '?')}; "
        f"test fold: {count('test_clips')} clips"
    )


def _index_page(
    study: optuna.Study, frame: pd.DataFrame, front: pd.DataFrame, figures: list[Any], hv: float
) -> str:
    from nas_asc.report.hypervolume import reference_point

    record = StudyRecord.of(study)
    budget = _budget(study)
    counts = frame["status"].fillna(frame["state"].str.lower()).value_counts().to_dict()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no trials"
    facts = [
        ("study", study.study_name),
        ("search space", record.space or "-"),
        ("data", record.data or "-"),
        (
            "budget",
            f"{budget.get('name', '-')}: {format_bytes(budget.get('max_param_bytes'))} of "
            f"parameters, {format_macs(budget.get('max_macs'))} MACs"
            + (
                f", {format_bytes(budget['max_activation_bytes'])} of activation RAM"
                if "max_activation_bytes" in budget
                else ""
            ),
        ),
        ("trials", f"{len(frame)} ({summary})"),
        ("Pareto-optimal", str(len(front))),
        ("hypervolume", f"{hv:.4f} (reference point: {reference_point(study).describe()})"),
        ("protocol", _protocol_line(study)),
    ]
    agreement = rank_agreement_line(front)
    if agreement:
        facts.append(("rank agreement", agreement))
    fit = sram_fit_line(front)
    if fit:
        facts.append(("SRAM", fit))
    plots = []
    for i, fig in enumerate(f for f in figures if f is not None):
        plots.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    eval_note = (
        "eval int8 % is the mean &plusmn; std of the int8 accuracy over retrainings with "
        "different seeds (<code>nas-asc evaluate</code>), seed count in parentheses. "
        if _has_any(front, "eval_int8_mean")
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>nas-asc report: {html.escape(study.study_name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 10px; text-align: right; }}
table.facts th {{ text-align: left; background: #f4f4f4; }}
table.facts td {{ text-align: left; }}
</style></head>
<body>
<h1>nas-asc report: study {html.escape(study.study_name)}</h1>
<p>Accuracy is the int8 model's top-1 accuracy. The objectives and the Pareto front are chosen
on the validation split (held-out locations of the training data); the test fold
(fold1_evaluate; devices s4-s6 never seen in training) is measured once, after the search, on
the Pareto models. {eval_note}Complexity follows the DCASE Task 1 rule: parameter bytes at the
stored dtype, MACs of one 1-second inference.</p>
<table class="facts">{rows}</table>
<h2>Pareto front</h2>
{_html_table(front)}
<p>Files: <a href="pareto.csv">pareto.csv</a>, <a href="trials.csv">trials.csv</a>,
<a href="hypervolume.csv">hypervolume.csv</a>, <a href="pareto.html">pareto.html</a>.</p>
<h2>Figures</h2>
{"".join(plots)}
</body></html>
"""


def write_report(study: optuna.Study, out_dir: str | Path) -> ReportPaths:
    """Write the report of ``study`` into ``out_dir``.

    Files: ``trials.csv``, ``pareto.csv``, ``hypervolume.csv``, ``pareto.html`` (the Pareto
    panels alone) and ``index.html`` (summary, Pareto table, the Pareto panels, per-device
    accuracy of the Pareto-optimal trials and hypervolume over trials). Both HTML files are
    self-contained (plotly.js inlined, they open offline). The Pareto panels show int8 accuracy
    against MACs and against parameter bytes, the budget limits as labelled dashed lines, the
    trained trials, the Pareto-optimal ones highlighted and joined by a staircase (the best
    accuracy reachable within each complexity), infeasible trials as crosses at 0 %, pruned
    trials as hollow triangles at their last accuracy, and hover text with each trial's number,
    metrics and full configuration. Each file is written atomically (temporary file in
    ``out_dir``, then ``os.replace``).

    Args:
        study: A multi-objective study written by the search.
        out_dir: The report directory; created if missing.

    Returns:
        The paths written.
    """
    from nas_asc.report.hypervolume import hypervolume_history, reference_point
    from nas_asc.report.plots import device_figure, hypervolume_figure

    directory = Path(out_dir)
    paths = ReportPaths(
        directory=directory,
        trials_csv=directory / "trials.csv",
        pareto_csv=directory / "pareto.csv",
        pareto_html=directory / "pareto.html",
        hypervolume_csv=directory / "hypervolume.csv",
        index_html=directory / "index.html",
    )
    frame = trials_frame(study)
    front = frame[frame["pareto"]].sort_values(["macs", "param_bytes", "trial"], kind="stable")
    front = front.reset_index(drop=True)
    history = hypervolume_history(study)
    hv = float(history["hypervolume"].iloc[-1]) if len(history) else 0.0
    pareto_fig = _figure(study, frame)
    figures = [
        pareto_fig,
        device_figure(front),
        hypervolume_figure(history, reference_point(study)),
    ]
    # every file is rendered before the first is written: a study the report cannot render
    # leaves no half report behind
    contents = {
        paths.trials_csv: frame.to_csv(index=False),
        paths.pareto_csv: front.to_csv(index=False),
        paths.hypervolume_csv: history.to_csv(index=False),
        paths.pareto_html: pareto_fig.to_html(include_plotlyjs=True, full_html=True),
        paths.index_html: _index_page(study, frame, front, figures, hv),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in contents.items():
        _write_atomic(path, text)
    return paths
