"""Tests for the TAU22 metadata loader and audio reader (on tiny generated datasets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from nas_asc.data.synth import SynthConfig, generate
from nas_asc.data.tau22 import (
    DEVICES,
    SAMPLE_RATE,
    SCENES,
    SEEN_DEVICES,
    TAU22,
    UNSEEN_DEVICES,
    ClipName,
    load_tau22,
    parse_filename,
    read_audio,
)
from nas_asc.errors import DatasetError

TINY = SynthConfig(
    cities=("lisbon", "paris"),
    train_locations=1,
    eval_locations=1,
    train_segments=1,
    eval_segments=1,
    train_clips_per_segment=2,
    eval_clips_per_segment=1,
    parallel_fraction=0.2,
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset shared by the tests of this module (never modified)."""
    return generate(tmp_path_factory.mktemp("tau22") / "tiny", TINY, progress=False)


@pytest.fixture
def root(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may modify."""
    return Path(shutil.copytree(tiny_root, tmp_path / "copy"))


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _write(frame: pd.DataFrame, path: Path, sep: str = "\t") -> None:
    frame.to_csv(path, sep=sep, index=False)


# ---------------------------------------------------------------------------------------------
# parse_filename
# ---------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert len(SCENES) == 10 and SCENES[0] == "airport" and SCENES[-1] == "tram"
    assert DEVICES == SEEN_DEVICES + UNSEEN_DEVICES
    assert SAMPLE_RATE == 44100


def test_parse_filename_with_folder() -> None:
    clip = parse_filename("audio/airport-lisbon-1000-40000-0-a.wav")
    assert clip == ClipName("airport", "lisbon", "1000", "40000", 0, "a")
    assert clip.identifier == "lisbon-1000"


@pytest.mark.parametrize(
    ("name", "scene", "device", "index"),
    [
        ("street_pedestrian-paris-12-3-9-s4.wav", "street_pedestrian", "s4", 9),
        ("audio/metro_station-vienna-7-101-5-s1.wav", "metro_station", "s1", 5),
        ("public_square-lyon-0-0-2-c.wav", "public_square", "c", 2),
    ],
)
def test_parse_filename_underscore_scenes(name: str, scene: str, device: str, index: int) -> None:
    clip = parse_filename(name)
    assert (clip.scene, clip.device, clip.index) == (scene, device, index)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("airport-lisbon-1000-40000-0.wav", "6"),
        ("street-pedestrian-paris-12-3-9-a.wav", "6"),
        ("beach-lisbon-1000-40000-0-a.wav", "unknown scene 'beach'"),
        ("airport-lisbon-1000-40000-0-z.wav", "unknown device 'z'"),
        ("airport-lisbon-1000-40000-x-a.wav", "non-integer clip index 'x'"),
        ("airport-lisbon-1000-40000-0-a.mp3", ".wav"),
        ("airport--1000-40000-0-a.wav", "empty field"),
    ],
)
def test_parse_filename_rejects_bad_names(name: str, needle: str) -> None:
    with pytest.raises(DatasetError) as info:
        parse_filename(name)
    message = str(info.value)
    assert needle in message
    assert name in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# load_tau22
# ---------------------------------------------------------------------------------------------


def test_load_tiny_dataset(tiny_root: Path) -> None:
    data = load_tau22(tiny_root)
    assert isinstance(data, TAU22)
    columns = ["filename", "scene_label", "label", "identifier", "city", "device"]
    meta = _read(tiny_root / "meta.csv")
    for frame in (data.train, data.evaluate):
        assert list(frame.columns)[: len(columns)] == columns
        if "row" in frame.columns:  # the clip's row in meta.csv
            assert (meta["filename"].to_numpy()[frame["row"]] == frame["filename"]).all()
        assert len(frame) > 0
        assert frame["filename"].str.startswith("audio/").all()
        assert frame["label"].dtype == np.int64
        assert (frame["label"].map(lambda i: SCENES[i]) == frame["scene_label"]).all()
        parsed = frame["filename"].map(parse_filename)
        assert (parsed.map(lambda c: c.identifier) == frame["identifier"]).all()
        assert (parsed.map(lambda c: c.device) == frame["device"]).all()
        assert (parsed.map(lambda c: c.city) == frame["city"]).all()
        assert frame.index.equals(pd.RangeIndex(len(frame)))
    assert set(data.train["device"]) <= set(SEEN_DEVICES)
    assert set(data.evaluate["device"]) == set(DEVICES)
    assert not set(data.train["identifier"]) & set(data.evaluate["identifier"])
    assert data.path(data.train["filename"].iloc[0]).is_file()
    assert len(data.fingerprint) == 16
    assert int(data.fingerprint, 16) >= 0
    assert load_tau22(tiny_root).fingerprint == data.fingerprint


def test_fingerprint_tracks_content(root: Path) -> None:
    before = load_tau22(root).fingerprint
    assert load_tau22(root, "split25").fingerprint != before
    first = _read(root / "evaluation_setup" / "fold1_train.csv")["filename"].iloc[0]
    with open(root / first, "ab") as fh:  # same name, different size
        fh.write(b"\0\0\0")
    assert load_tau22(root).fingerprint != before


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_tau22(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


def test_root_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        load_tau22(path)


def test_missing_meta(root: Path) -> None:
    (root / "meta.csv").unlink()
    with pytest.raises(DatasetError, match="meta.csv") as info:
        load_tau22(root)
    assert "not found" in str(info.value)


def test_meta_missing_column(root: Path) -> None:
    meta = _read(root / "meta.csv").drop(columns=["source_label"])
    _write(meta, root / "meta.csv")
    with pytest.raises(DatasetError, match="source_label") as info:
        load_tau22(root)
    message = str(info.value)
    assert "it has filename, scene_label, identifier" in message
    assert "required columns are filename, scene_label, identifier, source_label" in message


def test_meta_not_tab_separated(root: Path) -> None:
    _write(_read(root / "meta.csv"), root / "meta.csv", sep=",")
    with pytest.raises(DatasetError, match="not TAB-separated"):
        load_tau22(root)


def test_fold_missing_column(root: Path) -> None:
    path = root / "evaluation_setup" / "fold1_evaluate.csv"
    _write(_read(path).drop(columns=["scene_label"]), path)
    with pytest.raises(DatasetError, match="lacks column") as info:
        load_tau22(root)
    assert "scene_label" in str(info.value)
    assert "fold1_evaluate.csv" in str(info.value)


def test_missing_audio(root: Path) -> None:
    train = _read(root / "evaluation_setup" / "fold1_train.csv")
    gone = sorted(train["filename"])[:2]
    for name in gone:
        (root / name).unlink()
    with pytest.raises(DatasetError, match="2 audio file") as info:
        load_tau22(root)
    assert str(root / gone[0]) in str(info.value)
    assert "\n" not in str(info.value)
    data = load_tau22(root, check_audio=False)  # metadata alone still loads
    assert set(gone) <= set(data.train["filename"])


def test_fold_names_file_absent_from_meta(root: Path) -> None:
    path = root / "evaluation_setup" / "fold1_train.csv"
    train = _read(path)
    extra = pd.DataFrame({"filename": ["audio/bus-lisbon-99-0-0-a.wav"], "scene_label": ["bus"]})
    _write(pd.concat([train, extra]), path)
    with pytest.raises(DatasetError, match="absent from meta.csv") as info:
        load_tau22(root)
    assert "bus-lisbon-99-0-0-a.wav" in str(info.value)


def test_unknown_scene_label(root: Path) -> None:
    path = root / "evaluation_setup" / "fold1_evaluate.csv"
    frame = _read(path)
    frame.loc[0, "scene_label"] = "beach"
    _write(frame, path)
    with pytest.raises(DatasetError, match="unknown scene label 'beach'"):
        load_tau22(root)


def test_empty_split(root: Path) -> None:
    path = root / "evaluation_setup" / "fold1_evaluate.csv"
    path.write_text("filename\tscene_label\n")
    with pytest.raises(DatasetError, match="lists no clips"):
        load_tau22(root)


def test_unknown_train_split(tiny_root: Path) -> None:
    with pytest.raises(DatasetError, match="unknown train_split 'split7'") as info:
        load_tau22(tiny_root, train_split="split7")
    assert "fold1, split5, split10, split25, split50, split100" in str(info.value)


def test_split_file_in_split_setup_is_used(root: Path) -> None:
    train = _read(root / "evaluation_setup" / "fold1_train.csv")
    subset = train.iloc[[0, 3, 5]]
    _write(subset, root / "split_setup" / "split25.csv")
    data = load_tau22(root, train_split="split25")
    assert data.train["filename"].tolist() == subset["filename"].tolist()
    assert len(load_tau22(root).train) == len(train)
    assert data.evaluate["filename"].tolist() == load_tau22(root).evaluate["filename"].tolist()


def test_split_file_in_root_or_evaluation_setup(root: Path) -> None:
    train = _read(root / "evaluation_setup" / "fold1_train.csv")
    (root / "split_setup" / "split50.csv").unlink()
    _write(train.iloc[:2], root / "split50.csv")
    assert len(load_tau22(root, "split50").train) == 2
    _write(train.iloc[:4], root / "evaluation_setup" / "split50.csv")
    assert len(load_tau22(root, "split50").train) == 4  # evaluation_setup/ before the root


def test_missing_split_file_says_where_it_looked(root: Path) -> None:
    (root / "split_setup" / "split10.csv").unlink()
    with pytest.raises(DatasetError, match="split10") as info:
        load_tau22(root, "split10")
    message = str(info.value)
    assert str(root / "split_setup" / "split10.csv") in message
    assert str(root / "evaluation_setup" / "split10.csv") in message


# ---------------------------------------------------------------------------------------------
# read_audio
# ---------------------------------------------------------------------------------------------


def test_read_audio_mono(tiny_root: Path) -> None:
    name = _read(tiny_root / "evaluation_setup" / "fold1_evaluate.csv")["filename"].iloc[0]
    samples, rate = read_audio(tiny_root / name)
    assert rate == SAMPLE_RATE
    assert samples.dtype == np.float32 and samples.shape == (SAMPLE_RATE,)


def test_read_audio_downmixes_stereo(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = np.stack([np.full(1000, 0.5), np.full(1000, -0.1)], axis=1)
    soundfile.write(path, stereo, 22050, subtype="PCM_24")
    samples, rate = read_audio(path)
    assert rate == 22050
    assert samples.shape == (1000,) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, 0.2, atol=1e-5)


def test_read_audio_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.wav"):
        read_audio(path)


def test_read_audio_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(200)))
    with pytest.raises(DatasetError, match="corrupt.wav") as info:
        read_audio(path)
    assert "\n" not in str(info.value)


def test_read_audio_zero_frames(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros((0,), dtype=np.float32), 44100, subtype="PCM_24")
    with pytest.raises(DatasetError, match="no samples"):
        read_audio(path)


def test_read_audio_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_audio(tmp_path / "missing.wav")


def test_audio_replaced_by_other_audio_of_the_same_size_changes_the_cache_keys(
    tiny_root, tmp_path, monkeypatch
):
    """The fingerprint and the clip groups' keys follow the audio's contents, not only its
    names and sizes; each file is hashed once, then found in the digest index by its name,
    size and modification time."""
    import nas_asc._cache as cache
    from nas_asc.data.tau22 import load_tau22

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    hashed = []
    sha256 = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda path: hashed.append(path) or sha256(path))

    before = load_tau22(root)
    n_clips = len(before.train) + len(before.evaluate)
    assert len(hashed) == n_clips  # every clip hashed on first sight
    hashed.clear()
    assert load_tau22(root).fingerprint == before.fingerprint
    assert hashed == []  # nothing changed: every digest comes from the index

    clip = root / before.train.filename.iloc[0]
    samples, rate = soundfile.read(clip, dtype="float32")
    size = clip.stat().st_size
    soundfile.write(clip, np.zeros_like(samples), rate, subtype="PCM_24")  # silence
    assert clip.stat().st_size == size
    after = load_tau22(root)
    assert len(hashed) == 1  # only the replaced clip is hashed again
    assert after.fingerprint != before.fingerprint
    assert after.sources["train"][0] != before.sources["train"][0]
    assert after.sources["evaluate"] == before.sources["evaluate"]


def test_a_digest_index_that_cannot_be_written_does_not_stop_loading(tiny_root, monkeypatch):
    """A full cache disk: the digests are still computed (the same fingerprint), only not kept."""
    import errno

    import nas_asc._cache as cache
    from nas_asc.data.tau22 import load_tau22

    expected = load_tau22(tiny_root).fingerprint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "atomic_file", full)
    monkeypatch.setattr(cache, "DIGESTS", "file-digests-unwritable")  # nothing cached to reuse
    assert load_tau22(tiny_root).fingerprint == expected
