"""Tests for the synthetic TAU22-layout dataset generator (tiny configs only)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from nas_asc.data.synth import SYNTH_VERSION, SynthConfig, default_dataset, generate
from nas_asc.data.tau22 import (
    DEVICES,
    SAMPLE_RATE,
    SCENES,
    SEEN_DEVICES,
    UNSEEN_DEVICES,
    load_tau22,
    parse_filename,
)
from nas_asc.errors import DatasetError

TINY = SynthConfig(
    seed=3,
    cities=("lisbon", "paris"),
    train_locations=2,
    eval_locations=1,
    train_segments=1,
    eval_segments=1,
    train_clips_per_segment=2,
    eval_clips_per_segment=1,
    parallel_fraction=0.1,
)
SMALL = SynthConfig(
    cities=("prague",),
    train_locations=1,
    eval_locations=1,
    train_segments=1,
    eval_segments=1,
    train_clips_per_segment=1,
    eval_clips_per_segment=1,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated dataset shared by the read-only tests of this module."""
    return generate(tmp_path_factory.mktemp("synth") / "tiny", TINY, progress=False)


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text
    return text[:-1].split("\n")


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_headers(tiny: Path) -> None:
    expected = {
        "meta.csv": ["filename", "scene_label", "identifier", "source_label"],
        "evaluation_setup/fold1_train.csv": ["filename", "scene_label"],
        "evaluation_setup/fold1_evaluate.csv": ["filename", "scene_label"],
        "evaluation_setup/fold1_test.csv": ["filename"],
        **{f"split_setup/split{p}.csv": ["filename", "scene_label"] for p in (5, 10, 25, 50, 100)},
    }
    for name, header in expected.items():
        lines = _lines(tiny / name)
        assert lines[0] == "\t".join(header), name
        assert len(lines) > 1, name
        for line in lines:
            assert "," not in line
            assert len(line.split("\t")) == len(header), (name, line)
    meta = _table(tiny / "meta.csv")
    row = meta.iloc[0]
    clip = parse_filename(row["filename"])
    assert row["filename"].startswith("audio/")
    assert row["scene_label"] == clip.scene
    assert row["identifier"] == clip.identifier
    assert row["source_label"] == clip.device
    on_disk = {f"audio/{p.name}" for p in (tiny / "audio").iterdir()}
    assert on_disk == set(meta["filename"])
    assert meta["filename"].is_unique
    info = json.loads((tiny / "synth.json").read_text())
    assert info["version"] == SYNTH_VERSION
    assert info["config"] == json.loads(json.dumps(asdict(TINY)))
    assert not list(tiny.parent.glob(".*tmp"))  # atomic_dir left no temporary sibling


def test_loads_and_folds_are_consistent(tiny: Path) -> None:
    data = load_tau22(tiny)
    meta = _table(tiny / "meta.csv")
    assert len(data.train) + len(data.evaluate) == len(meta)
    assert set(data.train["scene_label"]) == set(SCENES)
    assert set(data.evaluate["scene_label"]) == set(SCENES)
    test = _table(tiny / "evaluation_setup" / "fold1_test.csv")
    assert test["filename"].tolist() == data.evaluate["filename"].tolist()
    previous: set[str] = set()
    for percent in (5, 10, 25, 50, 100):
        subset = set(load_tau22(tiny, f"split{percent}").train["filename"])
        assert previous <= subset  # nested, as in DCASE 2024
        previous = subset
    assert previous == set(data.train["filename"])


def test_device_split(tiny: Path) -> None:
    data = load_tau22(tiny)
    train_devices = data.train["device"]
    assert set(train_devices) == set(SEEN_DEVICES)
    assert not set(train_devices) & set(UNSEEN_DEVICES)
    assert (train_devices == "a").mean() > 0.5
    assert set(data.evaluate["device"]) == set(DEVICES)
    # Evaluation clips are parallel recordings: every clip on all nine devices.
    stems = data.evaluate["filename"].str.rsplit("-", n=1).str[0]
    assert (stems.value_counts() == len(DEVICES)).all()
    # Training recordings on other devices are parallel to a device-a clip.
    train_stems = data.train["filename"].str.rsplit("-", n=1).str[0]
    a_stems = set(train_stems[train_devices == "a"])
    assert set(train_stems) == a_stems


def test_location_split(tiny: Path) -> None:
    data = load_tau22(tiny)
    assert not set(data.train["identifier"]) & set(data.evaluate["identifier"])
    meta = _table(tiny / "meta.csv")
    per_identifier = meta.groupby("identifier")["scene_label"].nunique()
    assert (per_identifier == 1).all()  # a location belongs to one scene


def test_wav_format(tiny: Path) -> None:
    paths = sorted((tiny / "audio").iterdir())
    for path in paths[:: max(1, len(paths) // 12)]:
        info = soundfile.info(str(path))
        assert info.samplerate == SAMPLE_RATE
        assert info.channels == 1
        assert info.frames == SAMPLE_RATE
        assert info.format == "WAV"
        assert info.subtype == "PCM_24"
        samples, _ = soundfile.read(str(path), dtype="float32")
        rms = float(np.sqrt(np.mean(samples**2)))
        assert 1e-4 < rms < 0.5
        assert np.max(np.abs(samples)) < 1.0


def test_devices_differ_from_reference(tiny: Path) -> None:
    data = load_tau22(tiny)
    first = data.evaluate["filename"].iloc[0].rsplit("-", 1)[0]
    audio = {d: soundfile.read(str(tiny / f"{first}-{d}.wav"))[0] for d in DEVICES}
    for device in DEVICES[1:]:
        corr = np.corrcoef(audio["a"], audio[device])[0, 1]
        assert corr < 0.9999, device  # coloured, not a copy


def test_deterministic(tmp_path: Path) -> None:
    first = generate(tmp_path / "one", SMALL, progress=False)
    second = generate(tmp_path / "two", SMALL, progress=False)
    assert _digest(first) == _digest(second)
    other = generate(tmp_path / "three", SynthConfig(**{**asdict(SMALL), "seed": 1}), False)
    ours, theirs = _digest(first), _digest(other)
    assert len(ours) == len(theirs)
    audio = {v for k, v in ours.items() if k.startswith("audio/")}
    assert not audio & set(theirs.values())  # another seed gives other audio


def test_output_independent_of_worker_count(tmp_path: Path) -> None:
    serial = generate(tmp_path / "serial", SMALL, progress=False, workers=1)
    parallel = generate(tmp_path / "parallel", SMALL, progress=False, workers=2)
    assert _digest(serial) == _digest(parallel)


def test_refuses_non_empty_target(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not empty") as info:
        generate(out, SMALL, progress=False)
    assert str(out) in str(info.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_refuses_file_target(tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        generate(out, SMALL, progress=False)


def test_accepts_empty_target(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert generate(out, SMALL, progress=False) == out
    assert (out / "meta.csv").is_file()


def test_default_dataset_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_ASC_CACHE", str(tmp_path / "cache"))
    root = default_dataset(progress=False, config=SMALL)
    assert root.parent == tmp_path / "cache" / "datasets"
    assert root.name.startswith("synth-")
    stamp = (root / "meta.csv").stat().st_mtime_ns
    assert default_dataset(progress=False, config=SMALL) == root
    assert (root / "meta.csv").stat().st_mtime_ns == stamp
    other = default_dataset(progress=False, config=SynthConfig(**{**asdict(SMALL), "seed": 5}))
    assert other != root


@pytest.mark.parametrize(
    "change",
    [
        {"seed": -1},
        {"cities": ()},
        {"cities": ("new-york",)},
        {"cities": ("paris", "paris")},
        {"train_locations": 0},
        {"eval_clips_per_segment": 11},
        {"parallel_fraction": 1.5},
        {"confusion": -0.1},
        {"unseen_strength": -1.0},
    ],
)
def test_config_validation(change: dict) -> None:
    with pytest.raises(DatasetError):
        SynthConfig(**change)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_is_one_line_naming_the_clip_and_leaves_nothing(tmp_path: Path) -> None:
    """``data synth`` with writes capped at 50 kB per file (RLIMIT_FSIZE, a real write error
    the way a full disk is one): exit 2, one line naming the clip, no folder left behind."""
    import resource
    import signal
    import subprocess

    def cap_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    out = tmp_path / "synth"
    r = subprocess.run(
        [sys.executable, "-m", "nas_asc", "data", "synth", "--out", str(out)],
        preexec_fn=cap_file_size,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NAS_ASC_DEBUG="0"),
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]  # the lines before are the progress bar
    assert last.startswith("nas-asc: error: File too large: ") and last.count("\n") == 0
    assert ".wav; check that path" in last
    assert "worker processes failed" not in r.stderr  # not retried in one process
    assert not out.exists() and list(tmp_path.iterdir()) == []


# --- the real-size layout ------------------------------------------------------------------------


def test_the_real_size_plan_has_the_real_datasets_counts() -> None:
    from nas_asc.data.synth.realsize import realsize_plan

    parts = realsize_plan(1.0)
    assert {k: len(v) for k, v in parts.items()} == {
        "train": 139_620,
        "evaluate": 29_680,
        "unused": 61_050,
    }
    assert sum(len(v) for v in parts.values()) == 230_350
    names = [row[0] for rows in parts.values() for row in rows]
    assert len(set(names)) == len(names)
    assert {row[3] for row in parts["train"]} == {"a", "b", "c", "s1", "s2", "s3"}
    assert {row[3] for row in parts["evaluate"]} == set(DEVICES)
    train_locations = {row[2] for row in parts["train"]}
    assert train_locations.isdisjoint(row[2] for row in parts["evaluate"])
    clip = parse_filename(parts["evaluate"][-1][0])
    assert (clip.scene, clip.device) == (parts["evaluate"][-1][1], parts["evaluate"][-1][3])


def test_a_scaled_real_size_layout_links_clips_and_loads(tiny: Path, tmp_path: Path) -> None:
    from nas_asc.data.synth import realsize_layout

    # a hundredth of the real size: per device and part, segments rounded (at least one) x 10
    out = realsize_layout(tmp_path / "rs", tiny, fraction=0.01, progress=False)
    dataset = load_tau22(out)
    assert (len(dataset.train), len(dataset.evaluate), dataset.n_meta_rows) == (1400, 270, 2300)
    assert len(_lines(out / "evaluation_setup" / "fold1_test.csv")) == 271
    assert dataset.train.device.value_counts().to_dict() == {
        "a": 1020,
        "s1": 80,
        "s2": 80,
        "s3": 80,
        "b": 70,
        "c": 70,
    }
    sources = {p.stat().st_ino for p in (tiny / "audio").iterdir()}
    for line in _lines(out / "meta.csv")[1:]:
        name, scene, _, device = line.split("\t")
        clip = parse_filename(name)
        assert (clip.scene, clip.device) == (scene, device)
        assert (out / name).stat().st_ino in sources  # a hard link: no new audio
    split5 = load_tau22(out, "split5")
    assert 0 < len(split5.train) < len(load_tau22(out, "split25").train) < len(dataset.train)
    assert len(load_tau22(out, "split100").train) == len(dataset.train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(fraction=0), r"fraction must be in \(0, 1\], got 0"),
        (dict(fraction=1.5), r"fraction must be in \(0, 1\], got 1.5"),
        (dict(fraction="half"), r"fraction must be a number in \(0, 1\], got 'half'"),
        (dict(link="soft"), "link must be 'hard' or 'symbolic', got 'soft'"),
    ],
)
def test_the_real_size_layout_refuses_bad_settings(tiny, tmp_path, kwargs, message) -> None:
    from nas_asc.data.synth import realsize_layout

    with pytest.raises(DatasetError, match=message):
        realsize_layout(tmp_path / "rs", tiny, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_the_real_size_layout_refuses_a_source_without_clips(tmp_path: Path) -> None:
    from nas_asc.data.synth import realsize_layout

    (tmp_path / "src" / "audio").mkdir(parents=True)
    with pytest.raises(DatasetError, match="has no TAU22 clips"):
        realsize_layout(tmp_path / "rs", tmp_path / "src", fraction=0.01, progress=False)
    assert not (tmp_path / "rs").exists()
