from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nas_asc.data.features import FrontEnd, load_features, logmel, precompute_features


def test_report_front_end_gives_128_by_44_for_one_second():
    fe = FrontEnd()
    assert fe.input_shape() == (1, 128, 44)
    out = logmel(torch.randn(2, 44100), 44100, fe)
    assert out.shape == (2, 128, 44)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_mels=0), "n_mels must be a positive integer"),
        (dict(win_length=4096), "win_length"),
        (dict(window="kaiser"), "window must be one of"),
        (dict(f_max=20000.0), "f_max"),
    ],
)
def test_bad_front_ends_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrontEnd(**kwargs)


def test_features_are_cached_and_shared(tiny_dataset, _isolated_cache):
    fe = FrontEnd(n_mels=32)
    train, evaluate = load_features(tiny_dataset, fe, progress=False)
    assert train.x.shape[1:] == (1, 32, 44)
    assert len(train) == len(tiny_dataset.train) and len(evaluate) == len(tiny_dataset.evaluate)
    assert abs(float(train.x.mean())) < 1e-3 and abs(float(train.x.std()) - 1) < 1e-2
    cached = list((_isolated_cache / "features").glob("logmel-*.pt"))
    assert cached
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    train2, _ = load_features(tiny_dataset, fe, progress=False)  # served from the cache
    assert torch.equal(train.x, train2.x)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    assert train.rows.tolist() == tiny_dataset.train.row.tolist()
    assert set(evaluate.devices) >= {"s4", "s5", "s6"}


# --- one pass for several front ends, memory-mapped cache (issue 17) ----------------------------

# cheap front ends: two Mel counts on one STFT, a third on another rate and STFT
CHEAP = dict(sample_rate=8000, n_fft=512, win_length=512, hop_length=256)
PASS = (
    FrontEnd(n_mels=16, **CHEAP),
    FrontEnd(n_mels=24, **CHEAP),
    FrontEnd(sample_rate=16000, n_fft=1024, win_length=800, hop_length=400, n_mels=20),
)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("NAS_ASC_CACHE", str(root))
    return root


def _reference(dataset, names, frontend):
    """logmel() of the clips on one thread, in batches of 100 (the cache computes batches of 64:
    on one thread the values do not depend on the batch)."""
    import numpy as np

    from nas_asc.data.tau22 import read_audio

    waves = np.stack([read_audio(dataset.path(n))[0] for n in names])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [
            logmel(torch.from_numpy(waves[s : s + 100]), 44100, frontend)
            for s in range(0, len(names), 100)
        ]
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts).half()


def test_one_pass_gives_every_front_end_logmel_bit_for_bit(tiny_dataset, cache, capsys):
    assert precompute_features(tiny_dataset, PASS, progress=True) == 6  # 3 front ends x 2 groups
    err = capsys.readouterr().err
    assert "log-mel features, 16+24+20 Mel bins" in err and "clip" in err  # one bar per group
    assert precompute_features(tiny_dataset, PASS, progress=False) == 0  # all cached
    for fe in PASS:
        train, evaluate = load_features(tiny_dataset, fe, progress=False)
        for split in (train, evaluate):
            assert torch.equal(split.raw, _reference(tiny_dataset, split.filenames, fe))
    # 3 front ends x 2 groups: an array, its checksum, its metadata and the metadata's checksum
    assert len(list((cache / "features").iterdir())) == 24


@pytest.mark.slow  # spawns two worker processes (seconds of torch imports)
def test_worker_processes_compute_the_same_features(tiny_dataset, cache, monkeypatch):
    from nas_asc.data import features

    monkeypatch.setattr(features, "_TASK", 64)  # tasks for two workers from the tiny dataset
    one = precompute_features(tiny_dataset, PASS[:2], progress=False, workers=1)
    arrays = {p.name: p.read_bytes() for p in (cache / "features").glob("*.npy")}
    for p in (cache / "features").iterdir():
        p.unlink()
    assert precompute_features(tiny_dataset, PASS[:2], progress=False, workers=2) == one == 4
    assert {p.name: p.read_bytes() for p in (cache / "features").glob("*.npy")} == arrays


def _mapped_files(t: torch.Tensor) -> set[str]:
    """The files mapped at the memory of ``t`` (Linux)."""
    ptr = t.untyped_storage().data_ptr()
    found = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            if lo <= ptr < hi and len(fields) == 6:
                found.add(fields[5])
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_loaded_features_map_the_cache_files_without_a_copy(tiny_dataset, tiny_search, cache):
    fe = PASS[0]
    train, evaluate = load_features(tiny_dataset, fe, progress=False)
    (group,) = {f for f in _mapped_files(train.raw)}
    assert Path(group).parent == cache / "features" and group.endswith(".npy")
    assert _mapped_files(evaluate.raw) and _mapped_files(evaluate.raw) != {group}
    # a view's training part and validation split: files of their own rows, written once
    part, validation = load_features(tiny_search, fe, progress=False)
    (part_file,) = _mapped_files(part.raw)
    (validation_file,) = _mapped_files(validation.raw)
    assert Path(part_file).name.startswith(Path(group).stem + "-")
    assert len({group, part_file, validation_file}) == 3
    rows = {name: i for i, name in enumerate(train.filenames)}
    for split in (part, validation):
        idx = torch.tensor([rows[n] for n in split.filenames])
        assert torch.equal(split.raw, train.raw[idx])
    stamp = Path(part_file).stat().st_mtime_ns
    again, _ = load_features(tiny_search, fe, progress=False)
    assert _mapped_files(again.raw) == {part_file} and Path(part_file).stat().st_mtime_ns == stamp
    # the normalization: float64 statistics of the split's float16 values, rounded to float32
    values = part.raw.double()
    assert (part.mean, part.std) == (
        float(np.float32(values.mean())),
        float(np.float32(values.std())),
    )
    assert abs(part.mean - float(part.raw.float().mean())) < 1e-5 * part.std


def test_precomputing_a_view_writes_its_split_files_too(tiny_search, cache):
    # a search view reads the training split's group only: one entry, and the files of the
    # training part's and validation split's rows, so that workers started next only map them
    assert precompute_features(tiny_search, PASS[:1], progress=False) == 1
    files = {p.name: p.stat().st_mtime_ns for p in (cache / "features").iterdir()}
    assert len([name for name in files if name.endswith(".npy")]) == 3
    load_features(tiny_search, PASS[0], progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "features").iterdir()} == files


def test_a_mapped_set_reads_batches_subsets_and_x_bit_for_bit(tiny_search, cache):
    part, _ = load_features(tiny_search, PASS[0], progress=False)
    expected = ((part.raw.float() - part.mean) / part.std).unsqueeze(1)
    idx = torch.tensor([5, 0, 17, 3])
    assert torch.equal(part.batch(idx), expected[idx])
    sub = part.subset(idx)
    assert sub.shape == (4, 1, 16, 32) and sub.raw.data_ptr() != part.raw.data_ptr()
    assert torch.equal(sub.batch(torch.tensor([2, 1])), expected[torch.tensor([17, 0])])
    assert sub.filenames == [part.filenames[i] for i in idx.tolist()]
    shared = part.subset(idx)  # shares the map until its raw is asked for
    assert torch.equal(shared.batch(slice(None)), expected[idx]) and shared._index is not None
    assert part.to("cpu") is part
    assert torch.equal(part.x, expected)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["group", "split"])
def test_a_corrupt_array_is_deleted_and_recomputed(tiny_search, cache, caplog, which):
    import logging

    part, validation = load_features(tiny_search, PASS[0], progress=False)
    expected = (part.x.clone(), validation.x.clone())  # read before the file changes under it
    del part, validation
    mapped = sorted((cache / "features").glob("*.npy"))
    group = [p for p in mapped if p.stem.count("-") == 1]
    split = [p for p in mapped if p.stem.count("-") == 2]
    assert len(group) == 1 and len(split) == 2
    _flip((group if which == "group" else split)[0])
    with caplog.at_level(logging.WARNING):
        part, validation = load_features(tiny_search, PASS[0], progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if which == "group":  # the split files hold the rows: the group is not even read
        assert warnings == []
    else:
        assert len(warnings) == 1 and "does not match its checksum" in warnings[0]
        assert "recomputed" in warnings[0] and "\n" not in warnings[0]
    assert torch.equal(part.x, expected[0]) and torch.equal(validation.x, expected[1])


def test_a_checksum_valid_entry_for_other_clips_is_not_used(tiny_dataset, cache, caplog):
    import logging

    from nas_asc._cache import load_torch, save_torch
    from nas_asc.data.features import _cache_path

    train, _ = load_features(tiny_dataset, PASS[0], progress=False)
    expected = train.x.clone()
    meta_path = _cache_path(tiny_dataset, "train", PASS[0]).with_suffix(".pt")
    meta = load_torch(meta_path)
    meta["filenames"] = meta["filenames"][::-1]
    save_torch(meta, meta_path)
    with caplog.at_level(logging.WARNING):
        again, _ = load_features(tiny_dataset, PASS[0], progress=False)
    assert any("does not match the dataset; recomputing" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.x, expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(workers=0), ValueError, "workers must be a positive integer or None, got 0"),
        (dict(workers="2"), TypeError, "workers must be a positive integer or None, got '2'"),
        (dict(frontends=[{"n_mels": 64}]), TypeError, "frontends must hold FrontEnd instances"),
    ],
)
def test_precompute_refuses_bad_arguments(tiny_dataset, kwargs, error, message):
    args = {"frontends": PASS[:1], "progress": False, **kwargs}
    with pytest.raises(error, match=message):
        precompute_features(tiny_dataset, **args)


def test_array_entries_are_atomic_checksummed_and_copy_on_write(tmp_path, caplog):
    import hashlib
    import logging

    from nas_asc._cache import atomic_array, load_array

    path = tmp_path / "entry.npy"
    with pytest.raises(KeyboardInterrupt), atomic_array(path, (3, 4), np.float16) as tmp:
        np.load(tmp, mmap_mode="r+")[:] = 1
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # no entry, no checksum, no temporary file
    with atomic_array(path, (3, 4), np.float16) as tmp:
        assert np.load(tmp, mmap_mode="r").sum() == 0  # zero-filled, its space reserved
        np.load(tmp, mmap_mode="r+")[1] = 2
    digest, name = (tmp_path / "entry.npy.sha256").read_text().split()
    assert (name, digest) == ("entry.npy", hashlib.sha256(path.read_bytes()).hexdigest())
    array = load_array(path)
    assert isinstance(array, np.memmap) and array.tolist()[1] == [2.0] * 4
    array[0] = 7  # this process's copy only
    assert np.load(path)[0].tolist() == [0.0] * 4
    # keep_existing: an entry that appeared meanwhile (another process's) stays in place
    with atomic_array(path, (3, 4), np.float16, keep_existing=True) as tmp:
        np.load(tmp, mmap_mode="r+")[:] = 5
    assert np.load(path).tolist()[1] == [2.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.npy", "entry.npy.sha256"]
    _flip(path)
    with caplog.at_level(logging.WARNING, logger="nas_asc._cache"):
        assert load_array(path) is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert "does not match its checksum" in message and "recomputed" in message
    assert list(tmp_path.iterdir()) == []


def test_the_front_end_spec_is_enough_to_compute_the_same_log_mel():
    """A firmware given only the card's parameters computes the model's input: an STFT and a Mel
    filterbank built from :func:`front_end_spec` alone reproduce :func:`logmel`."""
    import torchaudio

    from nas_asc.data.features import FrontEnd, front_end_spec, logmel

    frontend = FrontEnd(n_mels=40, hop_length=512, f_min=50.0)
    spec = front_end_spec(frontend)
    wave = torch.randn(1, frontend.sample_rate, generator=torch.Generator().manual_seed(0))
    st, mel, log = spec["stft"], spec["mel"], spec["log"]
    assert st["window"] == "hann" and st["window_periodic"] and st["center"]
    window = torch.hann_window(st["win_length"], periodic=st["window_periodic"])
    power = (
        torch.stft(
            wave,
            st["n_fft"],
            st["hop_length"],
            st["win_length"],
            window,
            center=st["center"],
            pad_mode=st["pad_mode"],
            normalized=st["normalized"],
            onesided=st["onesided"],
            return_complex=True,
        ).abs()
        ** st["power"]
    )
    bank = torchaudio.functional.melscale_fbanks(
        st["n_fft"] // 2 + 1,
        mel["f_min"],
        mel["f_max"],
        mel["n_mels"],
        frontend.sample_rate,
        mel["filterbank_norm"],
        mel["scale"],
    )
    ours = torch.log((power.transpose(1, 2) @ bank).transpose(1, 2) + log["offset"])
    assert torch.equal(ours, logmel(wave, frontend.sample_rate, frontend))  # bit for bit
    assert spec["mel"]["f_min"] == 50.0 and spec["mel"]["f_max"] == frontend.sample_rate / 2
