"""``nas-asc dashboard``: optuna-dashboard on a study's storage, with its artifact store.

The dashboard reads everything from the study itself: objectives by name (``int8_accuracy``,
``macs``, ``param_bytes``, set with ``set_metric_names`` by the search), each trial's complexity,
per-device accuracy and configuration (user attributes), and each trained trial's
confusion-matrix image and checkpoint (artifacts; the store is the folder the search recorded in
the study's ``artifact_dir`` attribute). Before serving, the study's per-device accuracy heatmap
and hypervolume history are saved as dashboard plots so that they appear on the study page.
"""

from __future__ import annotations

import warnings

import optuna

from nas_asc.errors import NasAscError

__all__ = ["study_url", "publish_report_plots", "serve"]


def _import_dashboard():
    try:
        import optuna_dashboard
    except ImportError:
        raise NasAscError(
            "the dashboard needs optuna-dashboard; install it with `pip install optuna-dashboard`"
        ) from None
    return optuna_dashboard


def study_url(study: optuna.Study, host: str, port: int) -> str:
    """URL of the study's page on a dashboard served at ``host:port``."""
    study_id = study._storage.get_study_id_from_name(study.study_name)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}/dashboard/studies/{study_id}"


def publish_report_plots(study: optuna.Study) -> int:
    """Save the per-device and hypervolume figures as dashboard plots of ``study``.

    Returns:
        The number of figures saved (0 when the study has no trained trial yet).
    """
    dashboard = _import_dashboard()
    from nas_asc.report.hypervolume import hypervolume_history, reference_point
    from nas_asc.report.pareto import pareto_frame
    from nas_asc.report.plots import device_figure, hypervolume_figure

    figures = [
        device_figure(pareto_frame(study)),
        hypervolume_figure(hypervolume_history(study), reference_point(study)),
    ]
    saved = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for fig in figures:
            if fig is not None:
                dashboard.save_plotly_graph_object(study, fig)
                saved += 1
    return saved


def serve(study: optuna.Study, storage: str, host: str, port: int, artifacts: bool = True) -> None:
    """Serve optuna-dashboard for ``storage`` until interrupted.

    Args:
        study: The study to show (its plots are published first).
        storage: The storage URL the study lives in.
        host: Interface to listen on (``127.0.0.1`` keeps it local).
        port: TCP port.
        artifacts: Serve the study's artifact store (checkpoints, confusion images).
    """
    dashboard = _import_dashboard()
    store = None
    if artifacts and study.user_attrs.get("artifact_dir"):
        from nas_asc.search.artifacts import study_artifact_store

        store = study_artifact_store(study)
    publish_report_plots(study)
    print(f"optuna-dashboard for study {study.study_name!r}: {study_url(study, host, port)}")
    print("press Ctrl+C to stop", flush=True)
    try:
        dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as exc:
        raise NasAscError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; choose another "
            "--port"
        ) from None
