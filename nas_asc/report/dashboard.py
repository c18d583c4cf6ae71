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

What the plots draw. An over-budget candidate is never trained: the 0 stored as its int8
accuracy is a placeholder, not a measurement, and the dashboard would draw it as a grey point at
accuracy 0 (Pareto front, history, ...). The study API's answer therefore names, for each
infeasible trial, the objectives it did not measure (``nas_asc_unmeasured``: the indices of the
objectives the trial does not record as user attributes; an untrained trial records ``macs``
and ``param_bytes`` but no ``int8_accuracy``), and the dashboard's script is served with a few
exact edits (``_BUNDLE_PATCHES``) that keep such a value off every plot axis and show it as
``null`` on hover. The same edits colour the Pareto front's trials with scales that have no grey
in them (the dashboard's "Best Trial" scale, plotly's ``Reds``, starts at light grey, so the
earliest Pareto trial looked like an infeasible one). The edits are written for the script of
optuna-dashboard 0.21; with another version, any that no longer matches is left out and
``serve`` says so in a line.
"""

from __future__ import annotations

import abc
import copy
import errno
import functools
import gzip
import hashlib
import json
import re
import socket
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from nas_asc.errors import NasAscError
from nas_asc.progress import ConsoleReporter
from nas_asc.study.record import StudyRecord
from nas_asc.study.storage import study_storage, unwrap_storage

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
    study_id = study_storage(study).get_study_id_from_name(study.study_name)
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


# The dashboard shows each saved plot in a half-width card (about 600 px at a 1400 px window)
# and never wraps a title: a longer one is cut at the card's edge. Titles are wrapped at this
# many characters, in this font size, about 420 px a line (so down to a window of ~1000 px).
_TITLE_CHARS = 60
_TITLE_FONT_SIZE = 12
_CARD_HEIGHT = 450  # px, the dashboard's card for a saved plot
_MODEBAR = 40  # px at the top of the card, where plotly's tool buttons show


def _dashboard_figure(fig: Any) -> Any:
    """A copy of ``fig`` laid out for a dashboard card: its title wrapped in lines of at most
    ``_TITLE_CHARS`` characters (``<br>``), below plotly's tool buttons and above the plot, and
    the card's height (a taller figure would run out of its card)."""
    shown = copy.deepcopy(fig)
    title = shown.layout.title.text or ""
    lines = textwrap.wrap(title, _TITLE_CHARS, break_long_words=False, break_on_hyphens=False)
    line_height = round(1.4 * _TITLE_FONT_SIZE)
    shown.update_layout(
        title={
            "text": "<br>".join(lines),
            "font": {"size": _TITLE_FONT_SIZE},
            "y": 1 - _MODEBAR / _CARD_HEIGHT,
            "yanchor": "top",
        },
        height=_CARD_HEIGHT,
        margin={"t": _MODEBAR + line_height * max(len(lines), 1) + 15},
    )
    return shown


def _delete_study_system_attrs(storage: BaseStorage, study_id: int, keys: list[str]) -> None:
    """Delete study system attributes (Optuna has no call for it; RDB storages only)."""
    backend = unwrap_storage(storage)
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

    The figures are those of the report, laid out for the dashboard's cards (titles wrapped).
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
    figures = [None if fig is None else _dashboard_figure(fig) for fig in figures]
    storage = study_storage(study)
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


_UNMEASURED = "nas_asc_unmeasured"  # trial field the edited dashboard script reads


def _unmeasured(trial: dict[str, Any], objectives: list[str]) -> list[int]:
    """Indices of the objectives an infeasible trial (study API form) did not measure.

    A trial of a nas-asc study records each objective it measured as a user attribute of the
    objective's name; an over-budget candidate, never trained, records its ``macs`` and
    ``param_bytes`` but has no ``int8_accuracy``: the value stored for it is a placeholder.
    Feasible trials, and trials that record none of their objectives (not written by nas-asc),
    are taken as measured.
    """
    if _feasible(trial) or not objectives:
        return []
    keys = {attr.get("key") for attr in trial.get("user_attrs") or [] if isinstance(attr, dict)}
    if not keys.intersection(objectives):
        return []
    return [i for i, name in enumerate(objectives) if name not in keys]


def _shown_study(study: dict[str, Any]) -> dict[str, Any]:
    """The study API's answer as the dashboard is to draw it: ``best_trials`` without
    infeasible trials, and each infeasible trial's unmeasured objectives named."""
    study["best_trials"] = [t for t in study["best_trials"] if _feasible(t)]
    objectives = study.get("objective_names") or []
    for trial in study["trials"]:
        unmeasured = _unmeasured(trial, objectives)
        if unmeasured:
            trial[_UNMEASURED] = unmeasured
    return study


def _study_api(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: the study API's answer through :func:`_shown_study`.

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
                body = json.dumps(_shown_study(json.loads(body))).encode()
            except (ValueError, KeyError, TypeError):
                pass  # not the study detail we know: pass it on as it is
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(answer["status"], headers, answer["exc_info"])
        return [body]

    return middleware


# --------------------------------------------------------------------------------------------
# The dashboard's script
# --------------------------------------------------------------------------------------------

_BUNDLE_URL = "/static/bundle.js"
# Defined ahead of the script; the edits below call them.
_BUNDLE_PRELUDE = (
    "globalThis.__nasAscUnmeasured=function(t,i){var u=t&&t." + _UNMEASURED + ";"
    "return Array.isArray(u)&&u.indexOf(i)>=0};"
    "globalThis.__nasAscValues=function(t){return t.values&&t.values.map("
    "function(v,i){return __nasAscUnmeasured(t,i)?null:v})};"
    # a point's value on axis i, null when it has no value on axis i or j (it is not drawn, and
    # does not stretch the other axis)
    "globalThis.__nasAscAt=function(t,i,j){"
    "return __nasAscUnmeasured(t,i)||__nasAscUnmeasured(t,j)?null:t.values[i]};\n"
)
# Pareto front colour scales by trial number, none reaching grey (the infeasible trials' colour):
# the other feasible trials light to dark blue, the Pareto ("best") trials orange to dark red.
_FEASIBLE_SCALE = '[[0,"#6baed6"],[1,"#08306b"]]'
_PARETO_SCALE = '[[0,"#fdae61"],[1,"#a50026"]]'
# (what it changes, exact text in optuna-dashboard 0.21's bundle.js, replacement); each text
# occurs once there.
_BUNDLE_PATCHES: tuple[tuple[str, str, str], ...] = (
    (
        "keep the unmeasured objectives a trial carries",
        "artifacts:e.artifacts,constraints:e.constraints}}",
        f"artifacts:e.artifacts,constraints:e.constraints,{_UNMEASURED}:e.{_UNMEASURED}}}}}",
    ),
    (
        "history, slice, EDF, parallel coordinates: no unmeasured value",
        "const r=e.values[t];return r===1/0||r===-1/0?null:r}",
        "const r=e.values[t];return r===1/0||r===-1/0||__nasAscUnmeasured(e,t)?null:r}",
    ),
    (
        "hover text: an unmeasured value as null",
        "pb=e=>JSON.stringify({number:e.number,values:e.values,",
        "pb=e=>JSON.stringify({number:e.number,values:__nasAscValues(e),",
    ),
    (
        "Pareto front: no unmeasured value",
        "x:e.map(e=>e.values?e.values[t]:null),y:e.map(e=>e.values?e.values[r]:null)",
        "x:e.map(e=>e.values?__nasAscAt(e,t,r):null),y:e.map(e=>e.values?__nasAscAt(e,r,t):null)",
    ),
    (
        "contour: no unmeasured value",
        "if(s.values[r]&&l.values[r]&&e.values){",
        "if(s.values[r]&&l.values[r]&&e.values&&!__nasAscUnmeasured(e,t)){",
    ),
    (
        "rank: no unmeasured value",
        "if(n&&i&&e.values){s.push(n),l.push(i);const r=e.values[t];",
        "if(n&&i&&e.values&&!__nasAscUnmeasured(e,t)){s.push(n),l.push(i);const r=e.values[t];",
    ),
    (
        "Pareto front: feasible trials in blue, none grey",
        'colorscale:"Blues",reversescale:!0,colorbar:{title:{text:"Trial"}}}',
        f'colorscale:{_FEASIBLE_SCALE},colorbar:{{title:{{text:"Trial"}}}}}}',
    ),
    (
        "Pareto front: Pareto trials in orange to red, none grey",
        'colorscale:"Reds",colorbar:{title:{text:"Best Trial"}',
        f'colorscale:{_PARETO_SCALE},colorbar:{{title:{{text:"Best Trial"}}',
    ),
)


@functools.cache
def _bundle() -> tuple[bytes, bytes, str, tuple[str, ...]]:
    """optuna-dashboard's script with ``_BUNDLE_PATCHES`` applied: the script, gzipped, its
    ETag, and what could not be changed (an edit whose text is not found once)."""
    dashboard = _import_dashboard()
    original = (Path(dashboard.__file__).parent / "public" / "bundle.js").read_text("utf-8")
    script, missing = original, []
    for what, old, new in _BUNDLE_PATCHES:
        if script.count(old) == 1:
            script = script.replace(old, new)
        else:
            missing.append(what)
    data = (_BUNDLE_PRELUDE + script).encode("utf-8")
    etag = '"nas-asc-' + hashlib.sha256(data).hexdigest()[:32] + '"'
    return data, gzip.compress(data, compresslevel=6, mtime=0), etag, tuple(missing)


def _edited_bundle(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: the dashboard's script served with ``_BUNDLE_PATCHES`` applied."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != _BUNDLE_URL:
            return app(environ, start_response)
        data, zipped, etag, _ = _bundle()
        headers = [
            ("Content-Type", "application/javascript; charset=UTF-8"),
            ("ETag", etag),
            ("Cache-Control", "no-cache"),  # revalidate: an unedited copy may be cached
            ("Vary", "Accept-Encoding"),
        ]
        if etag in environ.get("HTTP_IF_NONE_MATCH", ""):
            start_response("304 Not Modified", headers)
            return [b""]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            data = zipped
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(data))))
        start_response("200 OK", headers)
        return [data]

    return middleware


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


def dashboard_app(storage: BaseStorage, artifact_store: Any = None) -> Callable[..., Any]:
    """The optuna-dashboard WSGI application for ``storage``, infeasible trials shown so."""
    dashboard = _import_dashboard()
    app = dashboard.wsgi(_DashboardStorage(storage), artifact_store=artifact_store)
    return _edited_bundle(_study_api(app))


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
    if artifacts and StudyRecord.of(study).artifact_dir:
        from nas_asc.search.artifacts import study_artifact_store

        store = study_artifact_store(study)
    publish_report_plots(study)
    app = dashboard_app(open_storage(storage), artifact_store=store)
    missing = _bundle()[3]
    if missing:
        version = getattr(_import_dashboard(), "__version__", "?")
        ConsoleReporter(stream=sys.stderr).message(
            f"nas-asc: note: optuna-dashboard {version} is not the version whose plots nas-asc "
            f"adjusts (0.21); left as they are: {'; '.join(missing)}"
        )
    say = ConsoleReporter().message
    say(f"optuna-dashboard for study {study.study_name!r}: {study_url(study, host, port)}")
    say("press Ctrl+C to stop")
    try:
        # what optuna_dashboard.run_server does, without bottle's banner (the lines above say it)
        bottle.run(app, host=host, port=port, quiet=True)
    except OSError as exc:
        raise NasAscError(
            f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; choose another "
            "--port"
        ) from None
