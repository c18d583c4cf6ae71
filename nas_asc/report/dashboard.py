"""``nas-asc dashboard``: optuna-dashboard on a study's storage, with its artifact store.

The dashboard reads everything from the study itself: objectives by name (``int8_accuracy``,
``macs``, ``param_bytes``, set with ``set_metric_names`` by the search), each trial's complexity,
per-device accuracy and configuration (user attributes), and each trained trial's
confusion-matrix image and checkpoint (artifacts; the store is the folder the search recorded in
the study's ``artifact_dir`` attribute). Before serving, the study's per-device accuracy heatmap
and hypervolume history are saved as dashboard plots so that they appear on the study page; each
has a fixed id, so serving again replaces them (or leaves them alone when unchanged).

Infeasible trials. The search records a trial's budget constraints with Optuna's
``trial.set_constraint(key, value)``, one system attribute ``constraints:<key>`` each. The
dashboard (0.21) only knows the older form, a list in the system attribute ``constraints``: it
sends that list as each trial's ``constraints`` and its pages grey out a trial when a value is
positive; with the keyed form every trial looks feasible, over-budget ones as ordinary points at
accuracy 0. So the dashboard is served through a read view of the storage that gives each
trial that list (its constraint values; ``[1.0]`` for a trial with ``feasible`` false and no
constraint), without writing anything, and the study's "best trials" (a Pareto front the
dashboard computes over all trials, constraints ignored) are cut to the feasible ones.
"""

from __future__ import annotations

import abc
import copy
import errno
import json
import re
import socket
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nas_asc.errors import NasAscError

__all__ = ["PLOT_IDS", "dashboard_app", "publish_report_plots", "serve", "study_url"]

# Dashboard plot ids of the two figures (fixed, so that publishing again replaces them).
PLOT_IDS = ("nas-asc-accuracy-by-device", "nas-asc-hypervolume")
# Title openings of the figures, to find the copies older versions saved under random ids.
_TITLES = ("int8 accuracy per recording device", "Hypervolume over trials")
_PLOT_PREFIX = "dashboard:plot_data:"  # optuna-dashboard's study system attribute prefix
_CONSTRAINTS_KEY = "constraints"  # the list form optuna-dashboard reads
_STUDY_API = re.compile(r"/api/studies/\d+/?")


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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _saved_plots(system_attrs: dict[str, Any]) -> dict[str, str]:
    """The plotly JSON of each plot saved in a study, by plot id."""
    chunks: dict[str, dict[int, str]] = {}
    for key, value in system_attrs.items():
        if not key.startswith(_PLOT_PREFIX):
            continue
        plot_id, _, index = key[len(_PLOT_PREFIX) :].rpartition(":")
        if plot_id and index.isdigit() and isinstance(value, str):
            chunks.setdefault(plot_id, {})[int(index)] = value
    return {plot_id: "".join(parts[i] for i in sorted(parts)) for plot_id, parts in chunks.items()}


def _title(plot_json: str) -> str:
    try:
        title = json.loads(plot_json).get("layout", {}).get("title", "")
    except (ValueError, AttributeError):
        return ""
    if isinstance(title, dict):
        title = title.get("text", "")
    return title if isinstance(title, str) else ""


def _delete_study_system_attrs(storage: BaseStorage, study_id: int, keys: list[str]) -> None:
    """Delete study system attributes (Optuna has no call for it; RDB storages only)."""
    backend = getattr(storage, "_backend", storage)  # under Optuna's _CachedStorage
    if not keys or not isinstance(backend, optuna.storages.RDBStorage):
        return
    import sqlalchemy

    table = sqlalchemy.Table(
        "study_system_attributes", sqlalchemy.MetaData(), autoload_with=backend.engine
    )
    with backend.engine.begin() as conn:
        conn.execute(table.delete().where(table.c.study_id == study_id, table.c["key"].in_(keys)))


def publish_report_plots(study: optuna.Study) -> int:
    """Save the per-device and hypervolume figures as dashboard plots of ``study``.

    Each figure is saved under its id in ``PLOT_IDS``: publishing again replaces it, and skips
    it when it has not changed. Copies that earlier versions saved under random ids are
    deleted (RDB storages).

    Returns:
        The number of figures the study shows (0 when it has no trained trial yet).
    """
    dashboard = _import_dashboard()
    from nas_asc.report.hypervolume import hypervolume_history, reference_point
    from nas_asc.report.pareto import pareto_frame
    from nas_asc.report.plots import device_figure, hypervolume_figure

    figures = [
        device_figure(pareto_frame(study)),
        hypervolume_figure(hypervolume_history(study), reference_point(study)),
    ]
    storage = study._storage
    study_id = storage.get_study_id_from_name(study.study_name)
    saved = _saved_plots(storage.get_study_system_attrs(study_id))
    shown = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for plot_id, fig in zip(PLOT_IDS, figures, strict=True):
            if fig is None:
                continue
            shown += 1
            if saved.get(plot_id) != fig.to_json():
                dashboard.save_plotly_graph_object(study, fig, graph_object_id=plot_id)
    legacy = {
        plot_id
        for plot_id, plot_json in saved.items()
        if plot_id not in PLOT_IDS and _title(plot_json).startswith(_TITLES)
    }
    if legacy:
        keys = [
            key
            for key in storage.get_study_system_attrs(study_id)
            if key.startswith(_PLOT_PREFIX)
            and key[len(_PLOT_PREFIX) :].rpartition(":")[0] in legacy
        ]
        _delete_study_system_attrs(storage, study_id, keys)
    return shown


# --------------------------------------------------------------------------------------------
# Infeasible trials
# --------------------------------------------------------------------------------------------


def _dashboard_trial(trial: FrozenTrial) -> FrozenTrial:
    """``trial`` with its constraints also as the list optuna-dashboard reads (a copy)."""
    values = list(trial.constraints.values())
    if not values and trial.user_attrs.get("feasible") is False:
        values = [1.0]
    if not values or trial.system_attrs.get(_CONSTRAINTS_KEY) == values:
        return trial
    shown = copy.copy(trial)
    shown._system_attrs = {**trial.system_attrs, _CONSTRAINTS_KEY: values}
    return shown


class _DashboardStorage(BaseStorage):
    """A view of a storage whose trials carry their constraints in the dashboard's form.

    Reads and writes go to the wrapped storage unchanged; the trials read are copies with the
    ``constraints`` list added, nothing is written.
    """

    def __init__(self, base: BaseStorage) -> None:
        self._base = base

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return _dashboard_trial(self._base.get_trial(trial_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Iterable[optuna.trial.TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._base.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [_dashboard_trial(t) for t in trials]

    def __getattr__(self, name: str) -> Any:  # storage-specific attributes (engine, ...)
        if name == "_base":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self._base, name)


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: _DashboardStorage, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._base, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in dir(BaseStorage):
    if not _name.startswith("_") and _name not in ("get_trial", "get_all_trials"):
        setattr(_DashboardStorage, _name, _delegate(_name))
abc.update_abstractmethods(_DashboardStorage)


def _feasible(trial: dict[str, Any]) -> bool:
    return all(value <= 0 for value in trial.get("constraints") or [])


def _feasible_best_trials(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: the study API's ``best_trials`` without infeasible trials.

    The dashboard's front spans all complete trials; an infeasible trial (accuracy 0) cannot
    dominate a trained feasible one, so the feasible part of that front is the feasible front.
    """

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not _STUDY_API.fullmatch(path):
            return app(environ, start_response)
        answer: dict[str, Any] = {}

        def keep(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
            answer.update(status=status, headers=headers, exc_info=exc_info)
            return lambda data: None

        chunks = app(environ, keep)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        headers = answer["headers"]
        if answer["status"].startswith("200"):
            try:
                study = json.loads(body)
                study["best_trials"] = [t for t in study["best_trials"] if _feasible(t)]
                body = json.dumps(study).encode()
            except (ValueError, KeyError, TypeError):
                pass  # not the study detail we know: pass it on as it is
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(answer["status"], headers, answer["exc_info"])
        return [body]

    return middleware


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def dashboard_app(storage: BaseStorage, artifact_store: Any = None) -> Callable[..., Any]:
    """The optuna-dashboard WSGI application for ``storage``, infeasible trials shown so."""
    dashboard = _import_dashboard()
    app = dashboard.wsgi(_DashboardStorage(storage), artifact_store=artifact_store)
    return _feasible_best_trials(app)


def check_listenable(host: str, port: int) -> None:
    """Refuse, in one line, a host that does not resolve or an address that cannot be listened
    on (a port in use, an address of another machine), before anything is written."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError, OverflowError) as exc:
        raise NasAscError(
            f"cannot serve the dashboard on {host}:{port}: the host does not resolve "
            f"({getattr(exc, 'strerror', None) or exc}); pass --host 127.0.0.1 (this machine) "
            "or 0.0.0.0 (every interface)"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            fix = (
                "choose another --port"
                if exc.errno == errno.EADDRINUSE
                else "pass an address of this machine as --host (127.0.0.1, 0.0.0.0)"
            )
            raise NasAscError(
                f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; {fix}"
            ) from None


def serve(study: optuna.Study, storage: str, host: str, port: int, artifacts: bool = True) -> None:
    """Serve optuna-dashboard for ``storage`` until interrupted.

    Args:
        study: The study to show (its plots are published first).
        storage: The storage URL the study lives in.
        host: Interface to listen on (``127.0.0.1`` keeps it local).
        port: TCP port.
        artifacts: Serve the study's artifact store (checkpoints, confusion images).
    """
    _import_dashboard()
    import bottle

    from nas_asc.search.study import open_storage

    check_listenable(host, port)  # before the plots are written into the study
    store = None
    if artifacts and study.user_attrs.get("artifact_dir"):
        from nas_asc.search.artifacts import study_artifact_store

        store = study_artifact_store(study)
    publish_report_plots(study)
    app = dashboard_app(open_storage(storage), artifact_store=store)
    print(f"optuna-dashboard for study {study.study_name!r}: {study_url(study, host, port)}")
    print("press Ctrl+C to stop", flush=True)
    try:
        # what optuna_dashboard.run_server does, without bottle's banner (the lines above say it)
        bottle.run(app, host=host, port=port, quiet=True)
    except OSError as exc:
        raise NasAscError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; choose another "
            "--port"
        ) from None
