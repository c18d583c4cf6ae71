"""The recording devices of the synthetic dataset: device models (EQ, self-noise, gain, soft
clipping) and the recording of a clip's spectrum through one of them (:func:`record`)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from nas_asc.data.synth.sources import (
    CLIP_SAMPLES,
    LOG2F,
    bump,
    highpass,
    lowpass,
    white_spectrum,
)
from nas_asc.data.tau22 import DEVICES

_FULL_SCALE = 1.0 - 2.0**-23  # the largest sample 24-bit PCM holds

#: Device models: high/low-pass corners and orders, resonances (Hz, octaves, dB), tilt (dB/oct),
#: self-noise (dBFS), gain (dB) and soft-clipping drive (0 = linear).
_DEVICES: dict[str, dict[str, Any]] = {
    "a": {
        "hp": 25,
        "lp": 19000,
        "order": 2,
        "peaks": (),
        "tilt": 0.0,
        "noise": -85,
        "gain": 0,
        "drive": 0.0,
    },
    "b": {
        "hp": 80,
        "lp": 14000,
        "order": 2,
        "peaks": ((3000, 0.8, 4), (200, 1.0, -3)),
        "tilt": -0.5,
        "noise": -72,
        "gain": -2,
        "drive": 0.0,
    },
    "c": {
        "hp": 120,
        "lp": 11000,
        "order": 2,
        "peaks": ((1200, 1.0, 3), (6000, 0.6, -5)),
        "tilt": 0.5,
        "noise": -70,
        "gain": 2,
        "drive": 0.0,
    },
    "s1": {
        "hp": 150,
        "lp": 16000,
        "order": 3,
        "peaks": ((2500, 0.5, 6), (500, 0.8, -4)),
        "tilt": 0.0,
        "noise": -65,
        "gain": 0,
        "drive": 0.5,
    },
    "s2": {
        "hp": 60,
        "lp": 8000,
        "order": 3,
        "peaks": ((900, 0.7, 5), (4000, 0.8, 3)),
        "tilt": -1.0,
        "noise": -68,
        "gain": 1,
        "drive": 0.4,
    },
    "s3": {
        "hp": 300,
        "lp": 12000,
        "order": 3,
        "peaks": ((1800, 0.4, 7), (7000, 0.5, 5)),
        "tilt": 0.0,
        "noise": -62,
        "gain": -1,
        "drive": 0.8,
    },
    "s4": {  # telephone-like band with a strong mid resonance
        "hp": 160,
        "lp": 6500,
        "order": 4,
        "peaks": ((1000, 0.6, 6),),
        "tilt": 0.0,
        "noise": -66,
        "gain": 1,
        "drive": 0.8,
    },
    "s5": {  # boomy, scooped mids, over-compressed
        "hp": 30,
        "lp": 7500,
        "order": 4,
        "peaks": ((150, 0.8, 7), (2500, 0.5, -6)),
        "tilt": -1.4,
        "noise": -68,
        "gain": -1,
        "drive": 1.4,
    },
    "s6": {  # tinny and noisy
        "hp": 260,
        "lp": 20000,
        "order": 4,
        "peaks": ((3500, 0.4, 7), (9000, 0.5, 6)),
        "tilt": 1.4,
        "noise": -63,
        "gain": 0,
        "drive": 0.7,
    },
}
#: Each device's place in :data:`~nas_asc.data.tau22.DEVICES` (keys its noise stream).
DEVICE_INDEX = {d: i for i, d in enumerate(DEVICES)}


@lru_cache(maxsize=32)
def _device_response(device: str, strength: float) -> np.ndarray:
    """Magnitude response (gain included) of a device model scaled by ``strength``."""
    spec = _DEVICES[device]
    hp = 20.0 * (spec["hp"] / 20.0) ** strength
    lp = 20000.0 * (spec["lp"] / 20000.0) ** strength
    db = spec["tilt"] * strength * LOG2F + spec["gain"] * strength
    for fc, bw, gain in spec["peaks"]:
        db = db + gain * strength * bump(fc, bw)
    response = highpass(hp, spec["order"]) * lowpass(lp, spec["order"]) * 10.0 ** (db / 20.0)
    response.setflags(write=False)
    return response


def record(
    spec: np.ndarray, device: str, strength: float, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pass a spectrum through a device model; return (linear output spectrum, samples)."""
    model = _DEVICES[device]
    response = _device_response(device, strength)
    noise = 10 ** ((-90.0 + (model["noise"] + 90.0) * strength) / 20)
    out = (spec + white_spectrum(rng, seed) * noise) * response
    samples = np.fft.irfft(out, CLIP_SAMPLES)
    drive = model["drive"] * strength
    if drive > 0:
        ref = 3.0 * math.sqrt(float(np.mean(samples**2))) + 1e-9
        samples = ref * np.tanh(drive * samples / ref) / drive
    return out, np.clip(samples, -_FULL_SCALE, _FULL_SCALE)
