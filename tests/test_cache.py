"""Cache integrity (issue 7): entries are written atomically and verified by checksum on load.

A corrupt entry (bytes flipped, truncated, its checksum missing) must never crash a search or
feed it wrong data: it is deleted with a one-line warning and recomputed, to the same values.
An interrupted write leaves no entry. Covers the generic helpers of ``nas_asc._cache``, the
log-mel feature cache, the teacher-logits cache and the cached synthetic dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import pytest
import torch

from nas_asc import _cache
from nas_asc._cache import check_manifest, load_torch, save_torch, write_manifest
from nas_asc.data.features import FrontEnd, load_features

# a cheap front end of its own, so its cache entry is computed by these tests only
FRONT = FrontEnd(sample_rate=8000, n_fft=512, win_length=512, hop_length=256, n_mels=16)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache root for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("NAS_ASC_CACHE", str(root))
    return root


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_checksum(path: Path) -> None:
    path.with_name(path.name + ".sha256").unlink()


CORRUPTIONS = {"flipped-byte": _flip, "truncated": _truncate, "no-checksum": _drop_checksum}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- the helpers ------------------------------------------------------------------------------


def test_save_then_load_round_trips_with_a_sha256sum_checksum(cache):
    path = cache / "x" / "entry.pt"
    obj = {"a": torch.arange(10), "names": ["p", "q"], "n": 3}
    save_torch(obj, path)
    loaded = load_torch(path)
    assert torch.equal(loaded["a"], obj["a"]) and loaded["names"] == ["p", "q"]
    digest, name = (path.parent / "entry.pt.sha256").read_text().split()
    assert name == "entry.pt" and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == ["entry.pt", "entry.pt.sha256"]


def test_an_absent_entry_is_none(cache):
    assert load_torch(cache / "nothing.pt") is None


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_a_corrupt_entry_is_deleted_with_one_warning(cache, corrupt, caplog):
    path = cache / "entry.pt"
    save_torch({"a": torch.randn(1000)}, path)
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger="nas_asc._cache"):
        assert load_torch(path) is None
    (message,) = _warnings(caplog)
    assert str(path) in message and "recomputed" in message and "\n" not in message
    assert not path.exists() and not path.with_name("entry.pt.sha256").exists()


class _Interrupt:
    """Pickling it raises, as a Ctrl-C or a full disk would in the middle of ``torch.save``."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_an_interrupted_write_leaves_no_entry(cache):
    path = cache / "entry.pt"
    with pytest.raises(KeyboardInterrupt):
        save_torch({"a": torch.randn(100_000), "b": _Interrupt()}, path)
    assert not path.exists()
    assert list(cache.iterdir()) == []  # neither the entry, its checksum, nor a temporary file


def test_a_crash_between_checksum_and_rename_leaves_no_entry(cache):
    # the checksum is written first: a crash before the rename leaves only an orphan checksum,
    # which reads as "absent" and is replaced by the next save
    path = cache / "entry.pt"
    cache.mkdir()
    path.with_name("entry.pt.sha256").write_text(f"{'0' * 64}  entry.pt\n")
    assert load_torch(path) is None
    save_torch({"a": torch.ones(3)}, path)
    assert torch.equal(load_torch(path)["a"], torch.ones(3))


def test_a_folder_manifest_catches_missing_truncated_and_altered_files(tmp_path):
    root = tmp_path / "entry"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(200)))
    write_manifest(root)
    assert check_manifest(root) is None and check_manifest(root, hashes=True) is None
    _flip(root / "sub" / "b.bin")  # same size: only the hashes see it
    assert check_manifest(root) is None
    assert "sub/b.bin" in check_manifest(root, hashes=True)
    _truncate(root / "sub" / "b.bin")
    assert "sub/b.bin of 100 bytes, expected 200" in check_manifest(root)
    (root / "a.txt").unlink()
    assert "lacks a.txt" in check_manifest(root)
    (root / _cache.MANIFEST).unlink()
    assert "has no manifest" in check_manifest(root)


# --- the feature cache ------------------------------------------------------------------------


def _feature_entry(dataset, source: str):
    from nas_asc.data.features import _cache_path

    path = _cache_path(dataset, source, FRONT)
    assert path.is_file()
    return path


@pytest.mark.parametrize("part", ["array", "metadata"])
@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_corrupt_features_are_recomputed_identically(cache, tiny_dataset, corrupt, part, caplog):
    train, evaluate = load_features(tiny_dataset, FRONT, progress=False)
    # read before the file changes: a set maps its cache file, and a file truncated in place
    # under a map faults (SIGBUS) where it is read
    expected = (train.x, evaluate.x)
    # training split and test fold: a .npy array (memory-mapped) and its .pt metadata each
    assert len(list((cache / "features").glob("*.npy"))) == 2
    assert len(list((cache / "features").glob("*.pt"))) == 2
    entry = _feature_entry(tiny_dataset, "train")
    corrupt(entry if part == "array" else entry.with_suffix(".pt"))
    with caplog.at_level(logging.WARNING):
        train2, evaluate2 = load_features(tiny_dataset, FRONT, progress=False)
    assert any("recomputed" in m for m in _warnings(caplog))
    assert torch.equal(expected[0], train2.x) and torch.equal(expected[1], evaluate2.x)
    assert (train.mean, train.std) == (train2.mean, train2.std)
    assert _cache.load_array(entry) is not None  # rewritten, with a valid checksum
    assert load_torch(entry.with_suffix(".pt")) is not None


def test_a_valid_entry_for_other_clips_is_not_used(cache, tiny_dataset, caplog):
    train, _ = load_features(tiny_dataset, FRONT, progress=False)
    meta = _feature_entry(tiny_dataset, "train").with_suffix(".pt")
    blob = load_torch(meta)
    blob["filenames"] = blob["filenames"][:-1]  # checksum-valid, but not this dataset's clips
    save_torch(blob, meta)
    with caplog.at_level(logging.WARNING):
        train2, _ = load_features(tiny_dataset, FRONT, progress=False)
    assert any("does not match the dataset" in m for m in _warnings(caplog))
    assert torch.equal(train.x, train2.x)


# --- the teacher cache ------------------------------------------------------------------------


def test_corrupt_teacher_logits_are_recomputed_identically(cache, tiny_dataset, caplog):
    from nas_asc.train.teacher import TeacherConfig, get_teacher

    one = TeacherConfig.uniform(1, width=8)
    config = dataclasses.replace(
        one, frontend=FRONT, train=dataclasses.replace(one.train, epochs=1)
    )
    first = get_teacher(tiny_dataset, config, progress=False)
    (entry,) = (cache / "teachers").glob("*.pt")
    _flip(entry)
    with caplog.at_level(logging.WARNING):
        second = get_teacher(tiny_dataset, config, progress=False)
    assert any("recomputed" in m for m in _warnings(caplog))
    assert torch.equal(first.logits.nan_to_num(), second.logits.nan_to_num())
    assert first.logits.isnan().equal(second.logits.isnan())
    assert load_torch(entry) is not None


# --- the synthetic dataset --------------------------------------------------------------------


def test_a_damaged_synthetic_dataset_is_regenerated(cache, caplog):
    from nas_asc.data.synth import SynthConfig, default_dataset

    config = SynthConfig(
        cities=("prague",),
        train_locations=1,
        eval_locations=1,
        train_segments=1,
        eval_segments=1,
        train_clips_per_segment=1,
        eval_clips_per_segment=1,
    )
    root = default_dataset(progress=False, config=config)
    assert check_manifest(root, hashes=True) is None
    clip = sorted((root / "audio").iterdir())[0]
    original = clip.read_bytes()
    _truncate(clip)  # as a disk that filled up, or a copy cut short, would leave it
    with caplog.at_level(logging.WARNING):
        assert default_dataset(progress=False, config=config) == root
    (message,) = [m for m in _warnings(caplog) if "synthetic dataset" in m]
    assert f"{clip.relative_to(root)} of" in message and "generating it again" in message
    assert clip.read_bytes() == original
    assert check_manifest(root, hashes=True) is None
    assert not list(root.parent.glob(".*"))  # no temporary or trash folder left


def test_a_cache_root_that_is_a_file_stops_the_search_before_any_file(
    tiny_root, tmp_path, monkeypatch, capsys
):
    """``NAS_ASC_CACHE`` naming a file: one line that names the variable and its fix, exit 2,
    checked before anything is written (no study, no reports)."""
    from nas_asc.cli import main

    afile = tmp_path / "not-a-folder"
    afile.write_text("a file\n")
    monkeypatch.setenv("NAS_ASC_CACHE", str(afile))
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--space", "cnn", "--data", str(tiny_root), "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"nas-asc: error: $NAS_ASC_CACHE={afile} is a file, not a folder; point NAS_ASC_CACHE "
        "at a folder\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]
