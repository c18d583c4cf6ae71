"""Report figures beyond the Pareto panels: per-device accuracy and hypervolume over trials."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from nas_asc.data.tau22 import SEEN_DEVICES, UNSEEN_DEVICES
from nas_asc.report.hypervolume import ReferencePoint

__all__ = ["device_figure", "hypervolume_figure"]


def _device_label(device: str) -> str:
    return f"{device} (unseen)" if device in UNSEEN_DEVICES else device


def _device_columns(front: pd.DataFrame, prefix: str) -> list[str]:
    """The devices (seen, then unseen) with a ``<prefix>acc_<device>`` figure on any row."""
    devices = (*SEEN_DEVICES, *UNSEEN_DEVICES)
    return [
        d
        for d in devices
        if f"{prefix}acc_{d}" in front and front[f"{prefix}acc_{d}"].notna().any()
    ]


def device_figure(front: pd.DataFrame) -> Any | None:
    """Heatmap of int8 accuracy per recording device for each Pareto-optimal trial.

    The test-fold figures (``test_acc_<device>``) when any trial has them, else the
    validation ones (``acc_<device>``). Rows are the Pareto trials (by MACs), columns the
    devices seen in training (a, b, c, s1-s3), then the unseen ones (s4-s6), then the seen and
    unseen means; devices without any figure are left out (the validation split holds only
    devices seen in training). ``None`` if the front is empty.
    """
    import plotly.graph_objects as go

    if front is None or len(front) == 0:
        return None
    on_test = bool(_device_columns(front, "test_"))
    prefix, split = ("test_", "test fold") if on_test else ("", "validation split")
    devices = _device_columns(front, prefix)
    columns = [f"{prefix}acc_{d}" for d in devices]
    x = [_device_label(d) for d in devices]
    for name, label in (("seen_accuracy", "seen mean"), ("unseen_accuracy", "unseen mean")):
        if f"{prefix}{name}" in front and front[f"{prefix}{name}"].notna().any():
            columns.append(f"{prefix}{name}")
            x.append(label)
    rows = front.sort_values(["macs", "param_bytes", "trial"], kind="stable")
    y = [f"trial {int(t)}" for t in rows["trial"]]
    z = [
        [None if pd.isna(v) else 100.0 * float(v) for v in rows[c]]
        for c in columns  # transposed below
    ]
    z = [list(r) for r in zip(*z, strict=True)]
    text = [["" if v is None else f"{v:.1f}" for v in r] for r in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=100,
            colorbar={"title": "int8 acc %"},
            hovertemplate="%{y}, device %{x}: %{z:.1f} %<extra></extra>",
        )
    )
    n_seen = sum(1 for d in devices if d in SEEN_DEVICES)
    if n_seen < len(devices):
        fig.add_vline(x=n_seen - 0.5, line={"color": "black", "width": 2})
        lines = "left of the line: devices seen in training; right: unseen devices s4-s6"
    else:
        lines = "devices seen in training"
    fig.add_vline(x=len(devices) - 0.5, line={"color": "black", "width": 2, "dash": "dot"})
    fig.update_layout(
        title=f"int8 accuracy per recording device on the {split}, Pareto-optimal trials ({lines})",
        template="plotly_white",
        height=max(260, 60 + 40 * len(y)),
        yaxis={"autorange": "reversed"},
    )
    return fig


def hypervolume_figure(history: pd.DataFrame, ref: ReferencePoint) -> Any | None:
    """Normalized hypervolume after each complete trial. ``None`` without complete trials."""
    import plotly.graph_objects as go

    if history is None or len(history) == 0:
        return None
    final = float(history["hypervolume"].iloc[-1])
    fig = go.Figure(
        go.Scatter(
            x=list(history["trial"]),
            y=list(history["hypervolume"]),
            mode="lines+markers",
            line={"shape": "hv", "color": "#2ca02c"},
            name="hypervolume",
            hovertemplate="after trial %{x}: %{y:.4f}<extra></extra>",
        )
    )
    top = max(final, 1e-3) * 1.15
    fig.update_layout(
        title=f"Hypervolume over trials (final {final:.4f}; reference point: {ref.describe()})",
        title_font_size=12,
        xaxis_title="trial",
        yaxis={"title": "hypervolume (normalized)", "range": [0, top if math.isfinite(top) else 1]},
        template="plotly_white",
        height=380,
    )
    return fig
