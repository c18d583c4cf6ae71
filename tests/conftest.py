"""Shared fixtures: an isolated cache root and one tiny synthetic TAU22 dataset per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY = dict(
    cities=("lisbon", "paris"),
    train_locations=1,
    eval_locations=1,
    train_segments=1,
    eval_segments=1,
    train_clips_per_segment=4,
    eval_clips_per_segment=1,
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Path:
    """Point $NAS_ASC_CACHE at a per-session folder unless the caller chose one (CI does)."""
    if os.environ.get("NAS_ASC_CACHE"):
        return Path(os.environ["NAS_ASC_CACHE"])
    root = tmp_path_factory.mktemp("nas-asc-cache")
    os.environ["NAS_ASC_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in the TAU22 layout (about 100 train and 180 evaluate clips)."""
    from nas_asc.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("data") / "tiny", SynthConfig(**TINY), progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_root):
    from nas_asc.data.tau22 import load_tau22

    return load_tau22(tiny_root)


@pytest.fixture(scope="session")
def tiny_protocol(tiny_dataset):
    """The tiny dataset's default protocol: a validation split of its training locations."""
    from nas_asc.data.protocol import ValidationSpec, make_protocol

    return make_protocol(tiny_dataset, ValidationSpec())


@pytest.fixture(scope="session")
def tiny_search(tiny_protocol):
    """What a search on the tiny dataset sees: training part and validation split, no test."""
    return tiny_protocol.search_view()
