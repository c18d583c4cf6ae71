"""The validation split (nas_asc.data.protocol): by location, stratified, seeded, test-blind."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from nas_asc.data.features import FrontEnd, load_features
from nas_asc.data.protocol import (
    DEFAULT_VALIDATION,
    ValidationSpec,
    carve_validation,
    make_protocol,
    protocol_from_record,
)
from nas_asc.data.tau22 import SCENES
from nas_asc.errors import DatasetError, NasAscError


def _frame(locations_per_scene: int, clips: int = 4, devices=("a", "b", "s1")) -> pd.DataFrame:
    """A training split of ``locations_per_scene`` locations per scene, ``clips`` clips each,
    the devices cycling over a location's clips."""
    rows = []
    for label, scene in enumerate(SCENES):
        for k in range(locations_per_scene):
            identifier = f"city{k % 3}-{label * 100 + k}"
            for i in range(clips):
                device = devices[i % len(devices)]
                rows.append(
                    {
                        "filename": f"audio/{scene}-{identifier}-{i}-0-{device}.wav",
                        "scene_label": scene,
                        "label": label,
                        "identifier": identifier,
                        "device": device,
                    }
                )
    return pd.DataFrame(rows)


def test_the_split_is_by_location_stratified_by_scene_and_covers_the_devices():
    train = _frame(10)
    mask = carve_validation(train, 0.2, seed=0)
    val, fit = train[mask], train[~mask]
    assert not set(val.identifier) & set(fit.identifier)  # no location on both sides
    for scene in SCENES:  # round(0.2 * 10) = 2 of each scene's 10 locations
        assert val.loc[val.scene_label == scene, "identifier"].nunique() == 2
        assert fit.loc[fit.scene_label == scene, "identifier"].nunique() == 8
    assert set(val.device) == set(fit.device) == {"a", "b", "s1"}
    assert mask.sum() == 10 * 2 * 4


@pytest.mark.parametrize(
    ("n", "fraction", "per_scene"),
    [(10, 0.5, 5), (10, 0.25, 3), (2, 0.2, 1), (2, 0.9, 1), (5, 0.01, 1), (5, 0.99, 4)],
)
def test_each_scene_keeps_at_least_one_location_on_each_side(n, fraction, per_scene):
    train = _frame(n)
    val = train[carve_validation(train, fraction, seed=3)]
    assert val.groupby("scene_label")["identifier"].nunique().tolist() == [per_scene] * 10


def test_the_split_depends_on_the_seed_and_nothing_else():
    train = _frame(10)
    first = carve_validation(train, 0.2, seed=0)
    assert np.array_equal(first, carve_validation(train.copy(), 0.2, seed=0))
    assert not np.array_equal(first, carve_validation(train, 0.2, seed=1))
    # the same clips in another order: the same clips in validation
    shuffled = train.sample(frac=1.0, random_state=5)
    again = carve_validation(shuffled, 0.2, seed=0)
    assert set(shuffled.filename[again]) == set(train.filename[first])


def test_the_test_fold_cannot_move_the_split(tiny_dataset):
    spec = ValidationSpec(seed=0)
    other_test = tiny_dataset.evaluate.iloc[::3].reset_index(drop=True)
    other = dataclasses.replace(tiny_dataset, evaluate=other_test, fingerprint="0" * 16)
    a, b = make_protocol(tiny_dataset, spec), make_protocol(other, spec)
    assert np.array_equal(a.validation_mask, b.validation_mask)
    assert a.identity() == b.identity()
    assert a.search_view().fingerprint == b.search_view().fingerprint


def test_a_scene_with_one_location_cannot_be_split():
    train = _frame(3)
    train = train[~((train.scene_label == "tram") & ~train.identifier.str.endswith("-900"))]
    with pytest.raises(DatasetError, match="scene 'tram' has 1 recording location in split25"):
        carve_validation(train, 0.2, seed=0, what="split25")


def test_a_device_that_cannot_be_on_both_sides_is_named():
    train = _frame(4, devices=("a",))
    train.loc[train.index[0], "device"] = "c"  # device c only at one location
    with pytest.raises(DatasetError, match="puts device 'c' on both sides in 100 draws"):
        carve_validation(train, 0.2, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), True])
def test_fractions_outside_zero_one_are_refused(fraction):
    with pytest.raises(NasAscError, match=r"fraction of the training locations in \(0, 1\)"):
        ValidationSpec(fraction=fraction)


def test_the_cli_default_is_the_library_default():
    from nas_asc import cli

    assert cli.DEFAULT_VALIDATION == DEFAULT_VALIDATION


def test_the_search_view_holds_no_test_clip(tiny_protocol, tiny_dataset):
    view = tiny_protocol.search_view()
    test = set(tiny_dataset.evaluate.filename)
    assert view.role == "search" and view.evaluate_source == "train"
    assert not (set(view.train.filename) | set(view.evaluate.filename)) & test
    assert len(view.train) + len(view.evaluate) == len(tiny_dataset.train)
    assert set(view.evaluate.device) == set(tiny_dataset.train.device)
    record = tiny_protocol.to_dict()
    assert record["validation_clips"] == len(view.evaluate)
    assert record["fit_clips"] == len(view.train)
    assert record["test_clips"] == len(tiny_dataset.evaluate)
    assert record["validation_fraction"] == DEFAULT_VALIDATION and record["validation_seed"] == 0


def test_search_and_test_views_share_training_features_and_normalization(
    tiny_protocol, tiny_dataset
):
    frontend = FrontEnd(n_mels=32)
    fit, val = load_features(tiny_protocol.search_view(), frontend, progress=False)
    fit2, test = load_features(tiny_protocol.test_view(), frontend, progress=False)
    assert torch.equal(fit.x, fit2.x) and (fit.mean, fit.std) == (fit2.mean, fit2.std)
    assert test.filenames == list(tiny_dataset.evaluate.filename)
    assert set(val.filenames) == set(tiny_protocol.validation.filename)
    # normalized by the training part alone
    raw = load_features(tiny_dataset, frontend, progress=False)[0]
    assert raw.mean != fit.mean


def test_the_search_reads_no_test_audio(tiny_root, tmp_path, monkeypatch):
    import shutil

    from nas_asc.data.tau22 import load_tau22

    monkeypatch.setenv("NAS_ASC_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    dataset = load_tau22(data)
    for name in dataset.evaluate.filename:  # the test fold's audio is gone
        (data / name).write_bytes(b"")
    protocol = make_protocol(dataset, ValidationSpec())
    fit, val = load_features(protocol.search_view(), FrontEnd(n_mels=32), progress=False)
    assert len(fit) + len(val) == len(dataset.train)
    with pytest.raises(DatasetError, match="is empty"):  # only the test view reads it
        load_features(protocol.test_view(), FrontEnd(n_mels=32), progress=False)


def test_a_validation_file_is_used_as_given(tiny_dataset, tmp_path):
    train = tiny_dataset.train
    chosen = train[train.identifier.str.startswith("lisbon-")]
    path = tmp_path / "val.csv"
    chosen[["filename", "scene_label"]].to_csv(path, sep="\t", index=False)
    protocol = make_protocol(tiny_dataset, ValidationSpec(file=str(path)))
    assert set(protocol.validation.filename) == set(chosen.filename)
    record = protocol.to_dict()
    assert record["validation"] == "file" and record["validation_file"] == str(path.resolve())
    rebuilt = protocol_from_record(tiny_dataset, record)
    assert np.array_equal(rebuilt.validation_mask, protocol.validation_mask)


def test_a_recorded_split_that_no_longer_matches_is_refused(tiny_protocol, tiny_dataset):
    record = {**tiny_protocol.to_dict(), "validation_split": "0" * 16}
    with pytest.raises(NasAscError, match="not the one the study was searched on"):
        protocol_from_record(tiny_dataset, record)
