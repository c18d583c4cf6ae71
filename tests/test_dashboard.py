"""``nas-asc dashboard`` serves the study: named objectives, attributes, artifacts, in a browser.

The browser part runs headless Chromium (Debian's ``chromium``, installed by ``.ci/run``). Without
a browser the test is skipped, unless ``NAS_ASC_REQUIRE_BROWSER=1`` (CI sets it), where a missing
browser fails. The screenshot is kept as a test artifact in ``$NAS_ASC_TEST_ARTIFACTS`` (default
``test-artifacts/`` in the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from toydata import artifact_context

from nas_asc.search.optuna_backend import SearchSettings, run_search

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


@pytest.fixture(scope="module")
def served(tiny_search, tmp_path_factory):
    """A 3-trial study in SQLite with artifacts, and the dashboard serving it."""
    work = tmp_path_factory.mktemp("dash")
    storage = f"sqlite:///{work / 'dash.db'}"
    artifacts = work / "artifacts"
    context = artifact_context(tiny_search, SPACE, artifacts)
    run_search(context, SearchSettings("dash", storage, 3, artifact_dir=str(artifacts)), "tiny")
    port = _free_port()
    log = (work / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nas_asc",
            "dashboard",
            "--study",
            "dash",
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
    deadline = time.monotonic() + 60
    while True:
        try:
            _get(f"{base}/api/studies/1?after=0")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"dashboard did not start: {(work / 'dashboard.log').read_text()}")
            time.sleep(0.5)
    yield base, work
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


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
