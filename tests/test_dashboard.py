"""``nas-asc dashboard`` serves the study: named objectives, attributes, artifacts, in a browser.

The browser part runs headless Chromium (Debian's ``chromium``, installed by ``.ci/run``). Without
a browser those tests are skipped, unless ``NAS_ASC_REQUIRE_BROWSER=1`` (CI sets it), where a
missing browser fails. What the page's plots draw is read back from the page through the Chrome
DevTools protocol (``--remote-debugging-pipe``: no extra package). The screenshots are kept as
test artifacts in ``$NAS_ASC_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the repository).
"""

from __future__ import annotations

import base64
import colorsys
import contextlib
import fcntl
import gzip
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import optuna
import optuna_dashboard
import plotly.graph_objects as go
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial
from toydata import artifact_context

from nas_asc.report.dashboard import (
    _BUNDLE_PATCHES,
    _TITLE_CHARS,
    PLOT_IDS,
    _bundle,
    _dashboard_figure,
    publish_report_plots,
)
from nas_asc.report.pareto import pareto_frame
from nas_asc.report.plots import device_figure
from nas_asc.search.backends import run_trials
from nas_asc.search.settings import SearchSettings

SPACE = {
    "name": "dash",
    "model": "tfsepnet",
    "fixed": {"frontend": {"n_mels": 32}, "train": {"batch_size": 32, "lr": 0.02, "epochs": 1}},
    "dimensions": {"model.width": {"type": "int", "low": 8, "high": 80, "step": 4}},
}
REPO = Path(__file__).resolve().parents[1]


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("NAS_ASC_REQUIRE_BROWSER") == "1":
        pytest.fail("NAS_ASC_REQUIRE_BROWSER=1 but no chromium on PATH")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def _artifacts() -> Path:
    out = Path(os.environ.get("NAS_ASC_TEST_ARTIFACTS", REPO / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


class _Chrome:
    """Headless Chromium driven through the DevTools protocol over a pipe (fds 3 and 4)."""

    def __init__(self, browser: str, width: int = 1400, height: int = 1000) -> None:
        to_browser, from_us = os.pipe()
        to_us, from_browser = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4: hand it our ends at
        # numbers above 9, where bash moves them to 3 and 4
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tempfile.mkdtemp(prefix='nas-asc-chrome-')}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
        ]
        script = f'exec "$0" "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", script, browser, *flags, "about:blank"],
            pass_fds=ends,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in ends:
            os.close(fd)
        self._out, self._in, self._buffer, self._id = from_us, to_us, b"", 0

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> str:
        """Open ``url`` in a new tab; returns the tab's session id."""
        target = self.send("Target.createTarget", url=url)["targetId"]
        return self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, session: str, expression: str):
        answer = self.send("Runtime.evaluate", session, expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"script failed in the page: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def screenshot(self, session: str, path: Path) -> None:
        shot = self.send("Page.captureScreenshot", session, captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)


@contextlib.contextmanager
def _chrome(browser: str):
    chrome = _Chrome(browser)
    try:
        yield chrome
    finally:
        chrome.close()


@contextlib.contextmanager
def _dashboard(study: str, storage: str, work: Path):
    """``nas-asc dashboard`` for ``study`` in a subprocess on a free port; yields its base URL."""
    port = _free_port()
    log_path = work / f"dashboard-{port}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nas_asc",
            "dashboard",
            "--study",
            study,
            "--storage",
            storage,
            "--port",
            str(port),
        ],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/api/studies/1?after=0")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not start: {log_path.read_text()}")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def served(tiny_search, tmp_path_factory):
    """A 3-trial study in SQLite with artifacts, and the dashboard serving it."""
    work = tmp_path_factory.mktemp("dash")
    storage = f"sqlite:///{work / 'dash.db'}"
    artifacts = work / "artifacts"
    context = artifact_context(tiny_search, SPACE, artifacts)
    run_trials(context, SearchSettings("dash", storage, 3, artifact_dir=str(artifacts)), "tiny")
    with _dashboard("dash", storage, work) as base:
        yield base, work


# its fixture runs a search (31 s); the budget_study tests check the dashboard API by default
@pytest.mark.slow
def test_dashboard_api_has_named_objectives_attributes_and_confusion_images(served):
    base, _ = served
    _, _, body = _get(f"{base}/api/studies/1?after=0")
    study = json.loads(body)
    assert study["objective_names"] == ["int8_accuracy", "macs", "param_bytes"]
    assert len(study["plotly_graph_objects"]) == 2  # per-device heatmap, hypervolume history

    def status(trial: dict) -> str:
        return next(a["value"] for a in trial["user_attrs"] if a["key"] == "status")

    trained = [t for t in study["trials"] if "trained" in status(t)]
    assert trained, "no trained trial in the study"
    for trial in trained:
        keys = {a["key"] for a in trial["user_attrs"]}
        assert {"macs", "param_bytes", "params", "accuracy_by_device", "config"} <= keys
        images = [a for a in trial["artifacts"] if a["mimetype"] == "image/png"]
        assert len(images) == 1
        url = f"{base}/artifacts/1/{trial['trial_id']}/{images[0]['artifact_id']}"
        status, content_type, png = _get(url)
        assert status == 200 and content_type == "image/png" and png[:4] == b"\x89PNG"


# its fixture runs a search (31 s); the budget_study tests check the dashboard API by default
@pytest.mark.slow
def test_study_page_shows_the_pareto_front_by_objective_name_in_a_browser(served):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on PATH (CI installs it and sets NAS_ASC_REQUIRE_BROWSER=1)")
    base, work = served
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={work / 'chrome'}",
        "--window-size=1400,1200",
        "--virtual-time-budget=10000",
    ]
    page = f"{base}/dashboard/studies/1"
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    assert "Pareto Front" in dom
    for name in ("int8_accuracy", "macs", "param_bytes"):
        assert name in dom
    shot = _artifacts() / "dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120
    )
    assert shot.is_file() and shot.stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# Infeasible trials and published plots, on a study written directly (no training)
# --------------------------------------------------------------------------------------------

FEASIBLE = {"macs": -0.5, "param_bytes": -0.25}  # relative excess per limit, as the search sets
WIDTH = {"model.width": IntDistribution(8, 80, step=4)}  # the searched parameter


def _width(nbytes: float) -> dict:
    return {"model.width": 8 + 4 * (int(nbytes) // 10_000 % 19)}


def _trained(accuracy: float, macs: float, nbytes: float) -> optuna.trial.FrozenTrial:
    by_device = {d: accuracy for d in ("a", "b", "c", "s1", "s2", "s3")}
    return create_trial(
        values=[accuracy, macs, nbytes],
        params=_width(nbytes),
        distributions=WIDTH,
        constraints=FEASIBLE,
        user_attrs={
            "status": "trained",
            "feasible": True,
            "macs": int(macs),
            "param_bytes": int(nbytes),
            "params": int(nbytes),
            "int8_accuracy": accuracy,
            "accuracy_by_device": by_device,
        },
    )


def _infeasible(macs: float, nbytes: float, constraints: dict | None) -> optuna.trial.FrozenTrial:
    return create_trial(
        values=[0.0, macs, nbytes],
        params=_width(nbytes),
        distributions=WIDTH,
        constraints=constraints,
        user_attrs={
            "status": "infeasible",
            "feasible": False,
            "infeasible_reason": "over budget",
            "macs": int(macs),
            "param_bytes": int(nbytes),
        },
    )


@pytest.fixture
def budget_study(tmp_path):
    """Trials 0, 1 trained and feasible; 2, 3, 4 over budget (2 with the fewest MACs of all,
    so on the unconstrained Pareto front; 4 recorded with ``feasible`` false only)."""
    storage = f"sqlite:///{tmp_path / 'budget.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="budget", storage=storage, directions=["maximize", "minimize", "minimize"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["int8_accuracy", "macs", "param_bytes"])
    study.add_trial(_trained(0.55, 2e6, 40_000))
    study.add_trial(_trained(0.65, 5e6, 60_000))
    study.add_trial(_infeasible(1e6, 500_000, {"macs": -0.9, "param_bytes": 4.0}))
    study.add_trial(_infeasible(50e6, 900_000, {"macs": 3.0, "param_bytes": 8.0}))
    study.add_trial(_infeasible(40e6, 100_000, None))
    return study, storage, tmp_path


def _plot_ids(study: optuna.Study) -> set[str]:
    prefix = "dashboard:plot_data:"
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k[len(prefix) :].rpartition(":")[0] for k in attrs if k.startswith(prefix)}


def test_publishing_again_replaces_the_plots_instead_of_adding_copies(budget_study):
    study, _, _ = budget_study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # what earlier versions left: a copy under a random id; and a plot of the user's own
        legacy = optuna_dashboard.save_plotly_graph_object(
            study, device_figure(pareto_frame(study))
        )
        own = optuna_dashboard.save_plotly_graph_object(study, go.Figure(layout={"title": "mine"}))
    assert len(_plot_ids(study)) == 2 and legacy != own

    assert publish_report_plots(study) == 2
    assert _plot_ids(study) == {*PLOT_IDS, own}  # the stale copy is gone, the user's plot kept
    before = study._storage.get_study_system_attrs(study._study_id)
    assert publish_report_plots(study) == 2
    assert study._storage.get_study_system_attrs(study._study_id) == before

    study.add_trial(_trained(0.75, 8e6, 80_000))  # a new trial: the figures are brought up to date
    assert publish_report_plots(study) == 2
    assert _plot_ids(study) == {*PLOT_IDS, own}
    after = study._storage.get_study_system_attrs(study._study_id)
    hypervolume = [k for k in after if k.startswith(f"dashboard:plot_data:{PLOT_IDS[1]}:")]
    assert "".join(after[k] for k in sorted(hypervolume, key=lambda k: int(k.rpartition(":")[2])))
    assert any(after[k] != before.get(k) for k in hypervolume)


def test_dashboard_api_marks_exactly_the_over_budget_trials_infeasible(budget_study):
    study, storage, work = budget_study
    publish_report_plots(study)  # then `nas-asc dashboard` publishes again
    with _dashboard("budget", storage, work) as base:
        _, _, body = _get(f"{base}/api/studies/1?after=0")
        _, content_type, zipped = _get(f"{base}/static/bundle.js", {"Accept-Encoding": "gzip"})
        assert content_type.startswith("application/javascript")
        script = gzip.decompress(zipped)
        etag = _bundle()[2]
        try:
            not_modified = _get(f"{base}/static/bundle.js", {"If-None-Match": etag})[0]
        except urllib.error.HTTPError as exc:  # urllib reports a 304 as an error
            not_modified = exc.code
    detail = json.loads(body)
    infeasible = {t["number"] for t in detail["trials"] if any(c > 0 for c in t["constraints"])}
    feasible = {t["number"] for t in detail["trials"] if all(c <= 0 for c in t["constraints"])}
    assert infeasible == {2, 3, 4} and feasible == {0, 1}
    assert {t["number"] for t in detail["best_trials"]} == {0, 1}
    # the accuracy (objective 0) of an over-budget trial is a placeholder: named unmeasured
    unmeasured = {t["number"]: t.get("nas_asc_unmeasured") for t in detail["trials"]}
    assert unmeasured == {0: None, 1: None, 2: [0], 3: [0], 4: [0]}
    assert [t["values"][0] for t in detail["trials"]] == [0.55, 0.65, 0.0, 0.0, 0.0]  # as stored
    assert sorted(g["id"] for g in detail["plotly_graph_objects"]) == sorted(PLOT_IDS)
    # the page's script comes with every edit applied (they match this optuna-dashboard)
    assert _bundle()[3] == ()
    assert script == _bundle()[0]
    for _, old, new in _BUNDLE_PATCHES:
        assert new.encode() in script and old.encode() not in script
    assert not_modified == 304
    # the study itself is unchanged: Optuna still sees the constraints the search recorded
    trials = optuna.load_study(study_name="budget", storage=storage).trials
    assert "constraints" not in trials[2].system_attrs
    assert trials[2].constraints == {"macs": -0.9, "param_bytes": 4.0}


@pytest.mark.parametrize(
    ("host", "port_in_use", "expected"),
    [
        ("127.0.0.1", True, "Address already in use; choose another --port"),
        ("no-such-host.invalid", False, "the host does not resolve"),
        ("192.0.2.1", False, "pass an address of this machine as --host"),  # TEST-NET-1
    ],
    ids=["busy-port", "unresolvable-host", "address-of-another-machine"],
)
def test_a_dashboard_that_cannot_listen_is_one_line_and_writes_nothing(
    budget_study, host, port_in_use, expected, monkeypatch, capsys
):
    """Checked before the plots are published into the study: one line, exit 2, the study
    unchanged (was: bottle's banner and a traceback line, after writing the plots)."""
    from nas_asc.cli import main

    study, storage, _ = budget_study
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    with contextlib.ExitStack() as stack:
        port = _free_port()
        if port_in_use:
            holder = stack.enter_context(socket.socket())
            holder.bind(("127.0.0.1", port))
            holder.listen()
        argv = ["dashboard", "--study", "budget", "--storage", storage]
        assert main([*argv, "--host", host, "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"nas-asc: error: cannot serve the dashboard on {host}:{port}: ")
    assert expected in err
    assert _plot_ids(study) == set()


# --------------------------------------------------------------------------------------------
# What the study page draws, read back from a browser
# --------------------------------------------------------------------------------------------


def test_dashboard_plot_titles_are_wrapped_to_fit_a_card():
    """The report's titles run to 150-210 characters; a dashboard card is ~600 px wide and cut
    them ('... (left o', '... 128,000 para'): the dashboard's copies are wrapped, word by word."""
    title = (
        "Hypervolume over trials (final 0.3604; reference point: accuracy 10% (chance), 30 M "
        "MACs and 128,000 parameter bytes (the budget); MACs and bytes are divided by these "
        "limits, so the hypervolume is at most 0.9)"
    )
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]), layout={"title": title, "height": 900})
    shown = _dashboard_figure(fig)
    lines = shown.layout.title.text.split("<br>")
    assert len(lines) > 1 and all(len(line) <= _TITLE_CHARS for line in lines)
    assert " ".join(lines) == title
    assert shown.layout.height == 450 and shown.layout.margin.t > 30 + 14 * len(lines)
    assert fig.layout.title.text == title and fig.layout.height == 900  # the report's is kept


# What the page's plots hold: for each plot, its traces as given (x, y, hovertemplate) and the
# points plotly drew for each (data coordinates, the trial number from the hover text, the fill
# colour the page computed), and where its title and tool buttons are.
_PLOTS_JS = """(() => {
  const box = e => { const r = e.getBoundingClientRect();
                     return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const plots = {};
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const drawn = [];
    for (const g of el.querySelectorAll('.scatterlayer .trace')) {
      const trace = g.__data__[0].trace;
      const points = Array.from(g.querySelectorAll('path.point')).map(p => {
        const d = p.__data__, text = trace.text && trace.text[d.i];
        let number = null;
        try { number = JSON.parse(String(text).replace(/<br>/g, '')).number; } catch (e) {}
        return {x: d.x, y: d.y, number: number, fill: getComputedStyle(p).fill};
      });
      drawn.push({hovertemplate: trace.hovertemplate || '', name: trace.name, points: points});
    }
    const title = el.querySelector('.gtitle');
    const modebar = el.querySelector('.modebar');
    plots[el.id] = {
      data: (el.data || []).map(t => ({x: t.x, y: t.y, hovertemplate: t.hovertemplate || ''})),
      drawn: drawn,
      plot: box(el),
      title: title ? {text: title.textContent, box: box(title)} : null,
      modebar: modebar ? box(modebar) : null,
      layout_title: el.layout && el.layout.title ? (el.layout.title.text || '') : '',
      yrange: el._fullLayout && el._fullLayout.yaxis ? el._fullLayout.yaxis.range : null,
    };
  }
  return plots;
})()"""
_PLOT_IDS_SHOWN = (
    "graph-pareto-front",
    "plot-history",
    *(f"user-defined-plot:{i}" for i in PLOT_IDS),
)


def _choose(chrome: _Chrome, tab: str, select: int, option: str) -> None:
    """Pick ``option`` in the page's ``select``-th drop-down list (a MUI select)."""
    chrome.evaluate(
        tab,
        f"document.querySelectorAll('[role=combobox]')[{select}]"
        ".dispatchEvent(new MouseEvent('mousedown', {bubbles: true}))",
    )
    pick = f"""(() => {{
      const lists = document.querySelectorAll('[role=listbox]');
      const o = lists.length !== 1 ? null : Array.from(lists[0].querySelectorAll('[role=option]'))
        .find(o => o.textContent === {json.dumps(option)});
      if (o) o.click();
      return Boolean(o);
    }})()"""
    deadline = time.monotonic() + 10
    while not chrome.evaluate(tab, pick):
        assert time.monotonic() < deadline, f"no option {option!r} in drop-down list {select}"
        time.sleep(0.2)
    while chrome.evaluate(tab, "document.querySelectorAll('[role=listbox]').length"):
        assert time.monotonic() < deadline, f"drop-down list {select} did not close"
        time.sleep(0.2)  # closing: its options are still there


def _drawn(plot: dict, kind: str) -> list[dict]:
    """The points drawn by the traces whose hover label is ``kind`` (``<extra>kind</extra>``)."""
    return [
        p
        for t in plot["drawn"]
        if f"<extra>{kind}</extra>" in t["hovertemplate"]
        for p in t["points"]
    ]


def _saturation(css: str) -> float:
    """HSV saturation of a CSS ``rgb(r, g, b)`` colour: 0 for a grey, 1 for a pure hue."""
    r, g, b = (int(v) / 255 for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return colorsys.rgb_to_hsv(r, g, b)[1]


@pytest.fixture
def front_study(budget_study):
    """``budget_study`` and two more trained trials: 5 dominates 0 and 6 is dominated by 1, so
    the Pareto front is {1, 5}, the other feasible trials {0, 6}, over budget {2, 3, 4}."""
    study, storage, work = budget_study
    study.add_trial(_trained(0.60, 1.5e6, 30_000))
    study.add_trial(_trained(0.50, 6e6, 70_000))
    return study, storage, work


@pytest.mark.slow  # a browser per study (15 s); the other browser test stays fast
def test_study_page_draws_no_untrained_accuracy_and_no_grey_pareto_trial_in_a_browser(
    front_study,
):
    """Issue 34, checked in what the page draws: over-budget trials (never trained) were drawn
    at int8 accuracy 0 in the Pareto front and the history, the earliest Pareto trial and the
    earliest other feasible trial in light grey (the infeasible trials' colour), and the saved
    plots' titles were cut at the card's edge."""
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium on PATH (CI installs it and sets NAS_ASC_REQUIRE_BROWSER=1)")
    study, storage, work = front_study
    title = {
        PLOT_IDS[0]: device_figure(pareto_frame(study)).layout.title.text,
        PLOT_IDS[1]: None,  # its final hypervolume is the study's: read from the figure below
    }
    with _dashboard("budget", storage, work) as base, _chrome(browser) as chrome:
        tab = chrome.open(f"{base}/dashboard/studies/1")
        deadline = time.monotonic() + 90
        while True:
            plots = chrome.evaluate(tab, _PLOTS_JS) or {}
            ready = all(plots.get(i, {}).get("data") for i in _PLOT_IDS_SHOWN) and all(
                plots[i]["title"] for i in _PLOT_IDS_SHOWN[2:]
            )
            if ready and _drawn(plots["graph-pareto-front"], "Best Trial"):
                break
            assert time.monotonic() < deadline, f"the study page did not draw its plots: {plots}"
            time.sleep(0.5)
        time.sleep(1)  # let the last plots settle before the screenshot
        plots = chrome.evaluate(tab, _PLOTS_JS)
        chrome.screenshot(tab, _artifacts() / "dashboard-over-budget.png")
        # the same plots on the axes the over-budget trials were measured on
        _choose(chrome, tab, 0, "macs")  # Pareto front, x
        _choose(chrome, tab, 1, "param_bytes")  # Pareto front, y
        _choose(chrome, tab, 2, "macs")  # history, y
        while True:
            measured = chrome.evaluate(tab, _PLOTS_JS)
            if len(_drawn(measured["plot-history"], "Infeasible Trial")) == 3 and _drawn(
                measured["graph-pareto-front"], "Infeasible Trial"
            ):
                break
            assert time.monotonic() < deadline + 60, f"the plots did not change axes: {measured}"
            time.sleep(0.5)

    over_budget = {2, 3, 4}
    # Pareto front, int8_accuracy (x) against MACs (y): the trained trials only, none at 0
    pareto = plots["graph-pareto-front"]
    drawn = [p for t in pareto["drawn"] for p in t["points"]]
    assert {p["number"] for p in drawn} == {0, 1, 5, 6}
    assert all(p["x"] > 0 for p in drawn)
    best, other = _drawn(pareto, "Best Trial"), _drawn(pareto, "Feasible Trial")
    assert {p["number"] for p in best} == {1, 5} and {p["number"] for p in other} == {0, 6}
    # the over-budget trials are in the plot's data without a point in this view, and their
    # MACs (up to 50 M) do not stretch the MAC axis either (the trained trials': up to 6 M)
    (infeasible,) = [t for t in pareto["data"] if "Infeasible Trial" in t["hovertemplate"]]
    assert infeasible["x"] == infeasible["y"] == [None] * 3
    assert pareto["yrange"][1] < 10e6
    # no trained trial in a colour that could be taken for the infeasible grey
    for point in best + other:
        assert _saturation(point["fill"]) > 0.3, point
    assert len({p["fill"] for p in best}) == 2  # by trial number, still
    # history of int8_accuracy: the trained trials, none at 0
    history = plots["plot-history"]
    drawn = [p for t in history["drawn"] for p in t["points"]]
    assert {p["number"] for p in drawn} == {0, 1, 5, 6} and not over_budget & {
        p["number"] for p in drawn
    }
    assert all(p["y"] > 0 for p in drawn)
    # the saved plots: whole titles, inside their cards, clear of the tool buttons
    for plot_id in PLOT_IDS:
        plot = plots[f"user-defined-plot:{plot_id}"]
        text, box, area = plot["layout_title"], plot["title"]["box"], plot["plot"]
        expected = title[plot_id] or text.replace("<br>", " ")
        assert text.replace("<br>", " ") == expected
        assert plot["title"]["text"].replace(" ", "") == expected.replace(" ", "")
        assert area["left"] <= box["left"] and box["right"] <= area["right"], (plot_id, box, area)
        modebar = plot["modebar"]
        if modebar:
            assert box["top"] >= modebar["bottom"] or box["right"] <= modebar["left"]
    assert "128,000 parameter bytes" in plots[f"user-defined-plot:{PLOT_IDS[1]}"]["layout_title"]
    # on the MACs and bytes axes, where they have values, the over-budget trials are drawn in
    # the dashboard's infeasible grey, at their MACs and bytes
    grey = "rgb(204, 204, 204)"
    pareto = measured["graph-pareto-front"]
    points = {p["number"]: (p["x"], p["y"], p["fill"]) for p in _drawn(pareto, "Infeasible Trial")}
    assert points == {2: (1e6, 500_000, grey), 3: (50e6, 900_000, grey), 4: (40e6, 100_000, grey)}
    assert all(_saturation(p["fill"]) > 0.3 for p in _drawn(pareto, "Best Trial"))
    points = {p["number"]: p["y"] for p in _drawn(measured["plot-history"], "Infeasible Trial")}
    assert points == {2: 1e6, 3: 50e6, 4: 40e6}
