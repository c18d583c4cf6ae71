from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from nas_asc.data.devicesim import (
    SimulatedDevices,
    generate_impulse_responses,
    load_impulse_responses,
    load_simulated_devices,
    simulate,
)
from nas_asc.data.features import FrontEnd, load_features
from nas_asc.errors import NasAscError

FE = FrontEnd(n_mels=32)


@pytest.fixture(scope="module")
def features(tiny_dataset):
    return load_features(tiny_dataset, FE, progress=False)


def _write_ir(path, ir, rate, subtype="PCM_24"):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), ir, rate, subtype=subtype)


def test_dirac_leaves_the_wave_unchanged():
    wave = torch.randn(2, 4000)
    assert torch.allclose(simulate(wave, torch.tensor([1.0])), wave, atol=1e-5)
    # A scaled Dirac is undone by the dynamic-range compensation (Eq. 2).
    assert torch.allclose(simulate(wave, torch.tensor([0.1, 0.0, 0.0])), wave, atol=1e-5)


def test_drc_restores_the_amplitude_range_and_keeps_the_length():
    wave = torch.randn(3, 4000) * torch.tensor([[0.01], [0.5], [2.0]])
    irs = torch.from_numpy(np.stack(generate_impulse_responses(3, 32000, seed=1)[:1]))
    out = simulate(wave, irs * 7.0)  # a loud IR: compensation must bring the range back
    assert out.shape == wave.shape
    span = wave.amax(-1) - wave.amin(-1)
    assert torch.allclose(out.amax(-1) - out.amin(-1), span, rtol=1e-5)
    assert not torch.allclose(out, wave, atol=1e-3)


def test_simulate_rejects_empty_inputs():
    with pytest.raises(ValueError, match="non-empty"):
        simulate(torch.zeros(2, 0), torch.ones(3))


def test_generated_irs_are_deterministic_finite_and_distinct():
    a = generate_impulse_responses(6, 32000, seed=3)
    b = generate_impulse_responses(6, 32000, seed=3)
    c = generate_impulse_responses(6, 32000, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(len(x) == len(y) and np.allclose(x, y) for x, y in zip(a, c, strict=True))
    for ir in a:
        assert ir.dtype == np.float32 and np.isfinite(ir).all()
        assert abs(float(np.sum(ir.astype(np.float64) ** 2)) - 1.0) < 1e-4  # unit energy
        assert len(ir) <= int(0.04 * 32000)
    spectra = [np.abs(np.fft.rfft(ir, 4096)) for ir in a]
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            assert not np.allclose(spectra[i], spectra[j], rtol=0.05)
    # The low-frequency roll-off of a small microphone: 50 Hz well below 1 kHz.
    freqs = np.fft.rfftfreq(4096, 1 / 32000)
    for spec in spectra:
        assert spec[np.argmin(abs(freqs - 50))] < spec[np.argmin(abs(freqs - 1000))]
    assert np.array_equal(generate_impulse_responses(2, 32000, seed=3)[1], a[1])  # prefix


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive int"):
        generate_impulse_responses(0, 32000)
    with pytest.raises(ValueError, match="sample_rate"):
        generate_impulse_responses(2, 100)


def test_stereo_48k_ir_folder_is_downmixed_resampled_and_trimmed(tmp_path):
    rate = 48000
    ir = np.zeros((960, 2), dtype=np.float32)
    ir[120, :] = [0.8, 0.4]  # 2.5 ms of leading silence, then a click, then a decay
    ir[121:400, 0] = 0.3 * np.exp(-np.arange(279) / 40.0)
    _write_ir(tmp_path / "irs" / "b_stereo.WAV", ir, rate)
    _write_ir(tmp_path / "irs" / "sub" / "a_mono.wav", np.r_[1.0, 0.5, 0.25].astype("f4"), rate)
    (tmp_path / "irs" / "notes.txt").write_text("not an IR")
    loaded = load_impulse_responses(tmp_path / "irs", 32000)
    assert len(loaded) == 2  # both WAVs (any case, any depth), not the text file
    stereo = loaded[0]  # sorted by path: b_stereo.WAV before sub/a_mono.wav
    assert stereo.ndim == 1 and stereo.dtype == np.float32
    assert abs(float(np.sum(stereo.astype(np.float64) ** 2)) - 1.0) < 1e-4
    # 280 samples of sound at 48 kHz are about 187 at 32 kHz (+0.5 ms kept before the onset,
    # + resampling filter tails): 2.5 ms of leading silence and the trailing zeros are gone.
    assert 180 < len(stereo) < 240
    assert int(np.argmax(np.abs(stereo))) < int(0.001 * 32000)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("empty", "holds no .wav files"),
        ("corrupt", "bad.wav cannot be decoded"),
        ("empty_wav", "void.wav holds no samples"),
        ("silent", "quiet.wav is silent"),
        ("long", "long.wav lasts 2.00 s"),
    ],
)
def test_bad_ir_folders_give_one_line_errors(tmp_path, setup, message):
    folder = tmp_path / "irs"
    if setup == "file":
        folder.write_text("x")
    elif setup != "missing":
        folder.mkdir()
    if setup == "corrupt":
        (folder / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    elif setup == "empty_wav":
        _write_ir(folder / "void.wav", np.zeros(0, dtype=np.float32), 32000)
    elif setup == "silent":
        _write_ir(folder / "quiet.wav", np.zeros(100, dtype=np.float32), 32000)
    elif setup == "long":
        noise = np.random.default_rng(0).uniform(-0.5, 0.5, 64000).astype(np.float32)
        _write_ir(folder / "long.wav", noise, 32000)
    with pytest.raises(NasAscError, match=message) as info:
        load_impulse_responses(folder, 32000)
    assert "\n" not in str(info.value)


def test_simulated_set_covers_device_a_train_rows_only(tiny_dataset, features):
    train, _ = features
    sim = load_simulated_devices(tiny_dataset, FE, train, copies=2, seed=0, progress=False)
    assert isinstance(sim, SimulatedDevices)
    assert sim.x.shape == (len(train), 2, 1, 32, 44) and sim.x.dtype == torch.float16
    assert sim.copies == 2
    expected = torch.tensor([d == "a" for d in train.devices])
    assert torch.equal(sim.available, expected)
    assert 0 < int(expected.sum()) < len(train)
    # Other devices' rows carry their original features and no IR.
    other = ~sim.available
    assert torch.equal(sim.x[other, 0].float(), train.x[other].half().float())
    assert (sim.ir_index[other] == -1).all()
    assert (sim.ir_index[sim.available] >= 0).all()
    # The two copies of a clip use different IRs and so differ.
    assert (sim.ir_index[sim.available, 0] != sim.ir_index[sim.available, 1]).all()
    a = sim.x[sim.available].float()
    assert not torch.allclose(a[:, 0], a[:, 1], atol=1e-2)
    # Simulated features differ from the originals but keep their scale (train-normalized).
    orig = train.x[sim.available]
    assert torch.isfinite(a).all()
    assert float((a[:, 0] - orig).abs().mean()) > 0.05
    assert abs(float(a.mean()) - float(orig.mean())) < 0.5
    assert 0.6 < float(a.std()) / float(orig.std()) < 1.5


def test_dirac_folder_reproduces_the_original_features(tiny_dataset, features, tmp_path):
    train, _ = features
    _write_ir(tmp_path / "dirac" / "d.wav", np.r_[1.0, 0.0].astype("f4"), 32000, "FLOAT")
    sim = load_simulated_devices(
        tiny_dataset, FE, train, ir_dir=tmp_path / "dirac", copies=1, progress=False
    )
    rows = sim.available
    diff = (sim.x[rows, 0].float() - train.x[rows]).abs().max()
    assert float(diff) < 0.02  # float16 storage of identical log-mels


def test_cache_is_reused_and_keyed_by_ir_set(tiny_dataset, features, tmp_path, _isolated_cache):
    train, _ = features
    folder = tmp_path / "irs"
    irs = generate_impulse_responses(3, 32000, seed=9)
    for i, ir in enumerate(irs):
        _write_ir(folder / f"ir{i}.wav", ir, 32000, "FLOAT")
    before = set((_isolated_cache / "devicesim").glob("devicesim-*.pt"))
    first = load_simulated_devices(tiny_dataset, FE, train, ir_dir=folder, progress=False)
    cached = set((_isolated_cache / "devicesim").glob("devicesim-*.pt")) - before
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    second = load_simulated_devices(tiny_dataset, FE, train, ir_dir=folder, progress=False)
    assert torch.equal(first.x, second.x) and torch.equal(first.ir_index, second.ir_index)
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes  # served, not rewritten
    # A damaged entry fails its checksum and is recomputed, never used.
    (entry,) = cached
    entry.write_bytes(entry.read_bytes()[:100])
    repaired = load_simulated_devices(tiny_dataset, FE, train, ir_dir=folder, progress=False)
    assert torch.equal(first.x, repaired.x) and entry.stat().st_size > 100
    # Rescaling the folder's files leaves the (unit-energy) IR set and so the cache unchanged.
    for i, ir in enumerate(irs):
        _write_ir(folder / f"ir{i}.wav", 0.5 * ir, 32000, "FLOAT")
    load_simulated_devices(tiny_dataset, FE, train, ir_dir=folder, progress=False)
    assert set((_isolated_cache / "devicesim").glob("devicesim-*.pt")) - before == cached
    # A different IR set is a different cache entry.
    _write_ir(folder / "ir9.wav", generate_impulse_responses(1, 32000, seed=10)[0], 32000)
    third = load_simulated_devices(tiny_dataset, FE, train, ir_dir=folder, progress=False)
    assert len(set((_isolated_cache / "devicesim").glob("devicesim-*.pt")) - before - cached) == 1
    assert not torch.equal(first.ir_index, third.ir_index) or not torch.equal(first.x, third.x)


def test_refuses_evaluate_clips_and_bad_arguments(tiny_dataset, features):
    train, evaluate = features
    with pytest.raises(NasAscError, match="outside the dataset's training split"):
        load_simulated_devices(tiny_dataset, FE, evaluate, progress=False)
    with pytest.raises(NasAscError, match="copies must be a positive integer"):
        load_simulated_devices(tiny_dataset, FE, train, copies=0, progress=False)
    with pytest.raises(NasAscError, match="front end gives"):
        load_simulated_devices(tiny_dataset, FrontEnd(n_mels=16), train, progress=False)
