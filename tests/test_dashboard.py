"""``nas-asc dashboard`` serves the study: named objectives, attributes, artifacts, in a browser.

The browser part runs headless Chromium (Debian's ``chromium``, installed by ``.ci/run``). Without
a browser the test is skipped, unless ``NAS_ASC_REQUIRE_BROWSER=1`` (CI sets it), where a missing
browser fails. The screenshot is kept as a test artifact in ``$NAS_ASC_TEST_ARTIFACTS`` (default
``test-artifacts/`` in the repository).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import optuna
import optuna_dashboard
import plotly.graph_objects as go
import pytest
from optuna.trial import create_trial
from toydata import artifact_context

from nas_asc.report.dashboard import PLOT_IDS, publish_report_plots
from nas_asc.report.pareto import pareto_frame
from nas_asc.report.plots import device_figure
from nas_asc.search.backend import run_search
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


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


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
    run_search(context, SearchSettings("dash", storage, 3, artifact_dir=str(artifacts)), "tiny")
    with _dashboard("dash", storage, work) as base:
        yield base, work


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
    out = Path(os.environ.get("NAS_ASC_TEST_ARTIFACTS", REPO / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120
    )
    assert shot.is_file() and shot.stat().st_size > 10_000


# --------------------------------------------------------------------------------------------
# Infeasible trials and published plots, on a study written directly (no training)
# --------------------------------------------------------------------------------------------

FEASIBLE = {"macs": -0.5, "param_bytes": -0.25}  # relative excess per limit, as the search sets


def _trained(accuracy: float, macs: float, nbytes: float) -> optuna.trial.FrozenTrial:
    by_device = {d: accuracy for d in ("a", "b", "c", "s1", "s2", "s3")}
    return create_trial(
        values=[accuracy, macs, nbytes],
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
    detail = json.loads(body)
    infeasible = {t["number"] for t in detail["trials"] if any(c > 0 for c in t["constraints"])}
    feasible = {t["number"] for t in detail["trials"] if all(c <= 0 for c in t["constraints"])}
    assert infeasible == {2, 3, 4} and feasible == {0, 1}
    assert {t["number"] for t in detail["best_trials"]} == {0, 1}
    assert sorted(g["id"] for g in detail["plotly_graph_objects"]) == sorted(PLOT_IDS)
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
