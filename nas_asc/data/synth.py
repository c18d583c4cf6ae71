"""Embedded synthetic acoustic-scene dataset in exactly the TAU Urban Acoustic Scenes 2022 layout.

The product demos and tests on this dataset, so it is built to behave like the real task in the
ways that matter for low-complexity acoustic scene classification: ten scene classes that a small
log-mel CNN separates well but not perfectly, confusable pairs, a location shift between train and
evaluate, and a device shift with devices unseen in training.

Layout (see :mod:`nas_asc.data.tau22`): ``audio/*.wav`` (1 s, 44.1 kHz, 24-bit PCM mono),
``meta.csv``, ``evaluation_setup/fold1_{train,evaluate,test}.csv``,
``split_setup/split{5,10,25,50,100}.csv`` (nested, scene-stratified subsets of the training split,
drawn segment by segment), ``synth.json`` (the generating config and :data:`SYNTH_VERSION`) and
``manifest.sha256`` (size and SHA-256 of every other file, written last as the completion mark).
Names follow ``scene-city-location-segment-index-device.wav``; location ids are numbers unique
within a city, segments are 10-second recordings of which ``*_clips_per_segment`` of the ten
1-second clips are kept.

Scenes. Every clip is a mix of a coloured noise bed and a scene-specific set of ingredients,
synthesised with numpy as shaped spectra (band-limited ingredients on coarse sample grids, so a
clip costs a few small FFTs):

* stationary sources: low ``rumble`` (vehicles, ventilation), ``engine`` harmonics (jittered
  pulse train at a drifting f0 through a resonant low-pass), electric-motor ``whine`` gliding in
  pitch, crowd ``babble`` (formant-shaped noise modulated at syllable rate), nearby ``voices``
  (voiced pulse trains with intonation, formants and syllable rhythm), gusty ``wind``, background
  ``music`` (melody over a bass note);
* events: footsteps (``steps``) and rail ``clacks`` (decaying noise clicks in rhythmic trains),
  rolling ``luggage`` (fast click trains), announcement ``chime`` (two or three bell notes in a
  per-location pattern), tram ``bell``, door ``beeps``, braking ``squeal``, car ``passby`` swells,
  ``birds`` (trills of fast FM chirps), car ``horn``;
* a room: exponentially decaying noise ``reverb`` (long in metro stations and airports, short in
  vehicles, almost none outdoors).

Each scene's recipe (:data:`_RECIPES`) gives, per ingredient, the probability that a location has
it, its level range and its parameter ranges. Every location draws its own variant of its scene
(widened by ``location_spread``); every 10-second segment and 1-second clip jitters the levels
(``clip_jitter``) and draws its own events; cities add a colouring of their own. The confusable
pairs of the real task share most ingredients: metro/tram (rumble, whine, clacks, squeal; tram
adds passing traffic and its bell, metro a louder tunnel rumble), street_pedestrian/public_square
(babble, voices, steps, passing cars; the square has birds, wind and a fountain-like hiss, fewer
steps), airport/shopping_mall (babble, steps, chimes, long reverb; luggage and announcements vs.
music) and bus/street_traffic (engine, rumble, passing cars; muffled inside the bus, bright and
with horns outside). On top of that each location is pulled towards its partner scene's recipe by
a random share of up to ``confusion``. Loudness ranges overlap between scenes and carry
per-location and per-clip gain jitter, and the bed colour varies per location and city, so the
mean spectrum is a weak cue; the temporal structure (modulation, chirps, clicks, tonal glides) is
what a CNN learns.

Devices. Device ``a`` is the reference recording of the clean scene (nearly flat). Devices ``b``
and ``c`` are other real devices recording the same scene with their own frequency response,
self-noise and gain. ``s1``-``s6`` are simulated from the device-``a`` recording of the same clip:
a device EQ (high/low-pass, resonances, tilt), added noise and level-relative soft clipping. The
unseen devices ``s4``-``s6`` (telephone-like band, boomy and compressed, tinny and noisy) are
coloured differently from the seen ones. The training split holds device ``a`` for every clip
and ``b``, ``c``, ``s1``-``s3`` for a ``parallel_fraction`` of them (device ``a`` is about 69 % of
it by default); the evaluate split holds parallel recordings of every evaluation clip on all nine
devices. Train and evaluate locations are disjoint.

Calibration (default config, 2,320 training and 1,440 evaluation clips): log-mel (32 kHz,
``n_fft=2048``, hop 744, 64 Mel bins) into a 4-layer CNN with 25k parameters trained 6 epochs
with Adam (one-cycle, peak 5e-3) reaches about 55 % evaluate accuracy (seen devices about 61 %,
unseen about 44 %; device ``a`` about 70 %), while a linear classifier on the mean log-mel reaches
about 37 %. Generating it takes about 15-25 s on two cores.

Determinism. Every location, segment, clip and device rendering draws from its own
``numpy.random.default_rng`` stream keyed by the seed and the clip's coordinates (noise is sliced
from a per-seed noise bank at drawn offsets), so the bytes do not depend on generation order or
the number of worker processes (on a given platform).
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from tqdm import tqdm

from nas_asc._cache import atomic_dir, cache_root, check_manifest, content_key, write_manifest
from nas_asc.data.tau22 import DEVICES, SAMPLE_RATE, SCENES
from nas_asc.errors import DatasetError

__all__ = ["SYNTH_VERSION", "SynthConfig", "default_dataset", "generate", "realsize_layout"]

_LOG = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes for a given config.
SYNTH_VERSION = 1

_N = SAMPLE_RATE  # samples per 1-second clip
_T = np.arange(_N) / SAMPLE_RATE
_F = np.fft.rfftfreq(_N, 1.0 / SAMPLE_RATE)
_LOG2F = np.log2(np.maximum(_F, 10.0) / 1000.0)
_TRAIN_EXTRA = ("b", "c", "s1", "s2", "s3")
_SPLIT_PERCENTS = (5, 10, 25, 50, 100)
_FULL_SCALE = 1.0 - 2.0**-23


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the synthetic dataset; the defaults are the embedded dataset.

    Attributes:
        seed: Master seed; each location, segment, clip and device draws its own stream.
        cities: Recording cities (TAU city names, lower case, no dashes).
        train_locations: Training locations per (scene, city).
        eval_locations: Evaluation locations per (scene, city); disjoint from training ones.
        train_segments: 10-second segments per training location.
        eval_segments: 10-second segments per evaluation location.
        train_clips_per_segment: 1-second clips (of indices 0-9) kept per training segment.
        eval_clips_per_segment: 1-second clips kept per evaluation segment.
        parallel_fraction: Share of training clips also recorded by each of b, c, s1, s2, s3.
        location_spread: Width of the per-location variation of scene parameters (1 = nominal).
        clip_jitter: Size of the per-segment and per-clip variation of levels (1 = nominal).
        event_level_db: Offset added to every ingredient's level over the bed (lower = harder).
        confusion: Largest share of the confusable partner scene's recipe mixed into a location.
        gain_jitter_db: Largest random gain per location (a third of it per clip), in dB.
        device_strength: Scale of the seen devices' colouration (b, c, s1-s3).
        unseen_strength: Scale of the unseen devices' colouration (s4-s6).
    """

    seed: int = 0  # master seed; every location/segment/clip/device derives its own stream
    cities: tuple[str, ...] = (  # recording cities (real TAU city names)
        "barcelona",
        "helsinki",
        "lisbon",
        "london",
        "lyon",
        "milan",
        "paris",
        "prague",
    )
    train_locations: int = 2  # training locations per (scene, city)
    eval_locations: int = 1  # evaluation locations per (scene, city)
    train_segments: int = 2  # 10-s segments per training location
    eval_segments: int = 1  # 10-s segments per evaluation location
    train_clips_per_segment: int = 5  # 1-s clips kept per training segment (of 10)
    eval_clips_per_segment: int = 2  # 1-s clips kept per evaluation segment (of 10)
    parallel_fraction: float = 0.09  # share of train clips also recorded by each of b,c,s1-s3
    location_spread: float = 1.0  # width of per-location parameter variation (1 = nominal)
    clip_jitter: float = 1.0  # size of per-segment/per-clip level variation (1 = nominal)
    event_level_db: float = 0.0  # dB added to all ingredients over the bed (lower = harder)
    confusion: float = 0.35  # max share of the partner scene's recipe mixed into a location
    gain_jitter_db: float = 6.0  # max random gain per location (a third per clip), dB
    device_strength: float = 1.0  # scale of seen-device colouration (b, c, s1-s3)
    unseen_strength: float = 1.0  # scale of unseen-device colouration (s4-s6)

    def __post_init__(self) -> None:
        """Validate the fields; raise DatasetError on bad values."""
        if not isinstance(self.seed, int) or self.seed < 0:
            raise DatasetError(f"SynthConfig.seed={self.seed!r} is invalid; use an integer >= 0")
        if not self.cities or len(set(self.cities)) != len(self.cities):
            raise DatasetError(
                f"SynthConfig.cities={self.cities!r} is empty or has duplicates; "
                "give distinct city names"
            )
        for city in self.cities:
            if not isinstance(city, str) or not city.isalpha() or not city.islower():
                raise DatasetError(
                    f"SynthConfig.cities has invalid name {city!r}; "
                    "use lower-case letters only (no dashes), e.g. 'lisbon'"
                )
        for name in ("train_locations", "eval_locations", "train_segments", "eval_segments"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DatasetError(f"SynthConfig.{name}={value!r} is invalid; use an integer >= 1")
        for name in ("train_clips_per_segment", "eval_clips_per_segment"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 10:
                raise DatasetError(
                    f"SynthConfig.{name}={value!r} is invalid; use an integer from 1 to 10"
                )
        for name in ("parallel_fraction", "confusion"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DatasetError(f"SynthConfig.{name}={value!r} is invalid; use 0 to 1")
        for name in (
            "location_spread",
            "clip_jitter",
            "gain_jitter_db",
            "device_strength",
            "unseen_strength",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 10.0:
                raise DatasetError(f"SynthConfig.{name}={value!r} is invalid; use 0 to 10")
        if not -40.0 <= self.event_level_db <= 40.0:
            raise DatasetError(
                f"SynthConfig.event_level_db={self.event_level_db!r} is invalid; use -40 to 40"
            )


# --------------------------------------------------------------------------------------------
# Scene recipes
# --------------------------------------------------------------------------------------------

#: Nominal parameter ranges of each ingredient; scene recipes override some of them.
_DEFAULTS: dict[str, dict[str, tuple[float, float]]] = {
    "bed": {"tilt": (-4.5, -2.5), "hp": (20, 60), "lp": (5000, 14000), "hump": (-3, 3)},
    "rumble": {"freq": (40, 120), "bw": (0.5, 1.0), "am_rate": (0.1, 0.6), "am_depth": (0.1, 0.5)},
    "engine": {"f0": (30, 80), "drift": (0.02, 0.15), "lp": (300, 1500), "res": (80, 300)},
    "whine": {"freq": (300, 1500), "glide": (0.1, 0.6), "clip_p": (0.5, 1.0)},
    "clacks": {"rate": (0.6, 1.6), "gap": (0.05, 0.15), "lp": (300, 1200), "decay": (0.02, 0.06)},
    "babble": {"talkers": (3, 12), "center": (450, 900), "rate": (3, 6)},
    "voices": {"f0": (90, 240), "center": (450, 800), "rate": (3, 6), "count": (1, 2)},
    "steps": {"rate": (1.5, 2.5), "bright": (1000, 3500), "decay": (0.01, 0.03), "walkers": (1, 3)},
    "luggage": {"rate": (12, 25), "clip_p": (0.2, 0.6), "bright": (500, 1500)},
    "chime": {"pitch": (500, 1200), "pattern": (0, 3.99), "clip_p": (0.1, 0.4)},
    "bell": {"pitch": (1200, 2500), "clip_p": (0.1, 0.3), "count": (1, 3)},
    "beeps": {"freq": (1500, 3500), "clip_p": (0.1, 0.4), "count": (2, 6)},
    "squeal": {"freq": (2000, 6000), "clip_p": (0.1, 0.4), "dur": (0.3, 1.0)},
    "passby": {"rate": (0.5, 2.0), "lp": (2000, 10000), "width": (0.3, 1.0)},
    "birds": {"rate": (1, 4), "freq": (2500, 6000), "sweep": (-1, 1), "dur": (0.04, 0.12)},
    "wind": {"lp": (150, 400), "gust": (0.3, 1.0)},
    "music": {"pitch": (180, 450), "tempo": (1.5, 4), "bright": (0.4, 0.8)},
    "horn": {"freq": (350, 500), "clip_p": (0.05, 0.2)},
    "reverb": {"rt60": (0.05, 0.3), "wet": (0.05, 0.2)},
}
_COMPONENTS = tuple(_DEFAULTS)
_MAX_PARAMS = 2 + max(len(v) for v in _DEFAULTS.values())  # presence, level, params
#: Parameters drawn on a log scale (frequencies and rates).
_LOG_PARAMS = frozenset({"hp", "lp", "freq", "f0", "res", "center", "bright", "pitch", "rate"})


def _c(p: float, level: tuple[float, float], **params: tuple[float, float]) -> dict:
    """One recipe entry: presence probability, level range (dB), parameter overrides."""
    return {"p": p, "level": level, **params}


#: Scene recipes: ingredient -> presence probability per location, level range (dB relative to
#: a unit-RMS reference; the mix is normalised afterwards), parameter overrides.
_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "airport": {
        "bed": _c(1, (-12, -6), lp=(5000, 12000)),
        "rumble": _c(1, (-10, -4), freq=(80, 200)),
        "babble": _c(1, (-6, 0), talkers=(8, 20)),
        "voices": _c(0.6, (-10, -4)),
        "steps": _c(0.9, (-8, -2)),
        "luggage": _c(0.9, (-6, 0), clip_p=(0.4, 0.8)),
        "chime": _c(0.8, (-4, 2), clip_p=(0.2, 0.5), pitch=(500, 900)),
        "music": _c(0.2, (-16, -8)),
        "reverb": _c(1, (0, 0), rt60=(0.9, 1.8), wet=(0.35, 0.55)),
    },
    "shopping_mall": {
        "bed": _c(1, (-12, -6), lp=(5000, 12000)),
        "rumble": _c(1, (-12, -6), freq=(80, 200)),
        "babble": _c(1, (-6, 0), talkers=(5, 15)),
        "voices": _c(0.8, (-8, -2), count=(1, 3)),
        "steps": _c(0.9, (-8, -2)),
        "luggage": _c(0.3, (-12, -6), clip_p=(0.1, 0.3)),
        "chime": _c(0.3, (-8, -2), clip_p=(0.05, 0.15), pitch=(700, 1400)),
        "music": _c(0.95, (-6, 0)),
        "reverb": _c(1, (0, 0), rt60=(0.6, 1.2), wet=(0.25, 0.45)),
    },
    "metro_station": {
        "bed": _c(1, (-12, -6), lp=(4000, 10000)),
        "rumble": _c(1, (-6, 0), freq=(40, 90), am_rate=(0.1, 0.3), am_depth=(0.4, 0.8)),
        "babble": _c(1, (-8, -2), talkers=(3, 12)),
        "voices": _c(0.5, (-10, -4)),
        "steps": _c(1, (-6, 0), rate=(1.8, 3)),
        "chime": _c(0.6, (-4, 2), clip_p=(0.15, 0.4), pitch=(600, 1000)),
        "beeps": _c(0.6, (-6, 0), clip_p=(0.1, 0.3)),
        "whine": _c(0.6, (-10, -4), clip_p=(0.3, 0.6)),
        "squeal": _c(0.4, (-8, -2), clip_p=(0.1, 0.25)),
        "clacks": _c(0.3, (-12, -6)),
        "reverb": _c(1, (0, 0), rt60=(1.4, 2.4), wet=(0.45, 0.65)),
    },
    "metro": {
        "bed": _c(1, (-10, -4), lp=(2500, 6000), tilt=(-6, -4)),
        "rumble": _c(1, (-2, 4), freq=(35, 80), am_depth=(0.1, 0.4)),
        "whine": _c(0.9, (-6, 0), freq=(300, 1000), clip_p=(0.6, 1.0)),
        "clacks": _c(0.9, (-6, 0), rate=(0.8, 1.8)),
        "babble": _c(0.6, (-12, -6), talkers=(2, 6)),
        "voices": _c(0.4, (-12, -6)),
        "beeps": _c(0.5, (-8, -2), clip_p=(0.05, 0.25)),
        "chime": _c(0.4, (-8, -2), clip_p=(0.05, 0.2)),
        "squeal": _c(0.4, (-8, -2), clip_p=(0.1, 0.3)),
        "reverb": _c(1, (0, 0), rt60=(0.25, 0.6), wet=(0.2, 0.4)),
    },
    "tram": {
        "bed": _c(1, (-10, -4), lp=(3500, 8000), tilt=(-5, -3)),
        "rumble": _c(1, (-6, 0), freq=(45, 110)),
        "whine": _c(0.8, (-8, -2), freq=(400, 1500), clip_p=(0.4, 0.9)),
        "clacks": _c(0.8, (-8, -2), rate=(0.5, 1.2)),
        "babble": _c(0.6, (-12, -6), talkers=(2, 6)),
        "voices": _c(0.4, (-12, -6)),
        "squeal": _c(0.8, (-6, 0), clip_p=(0.25, 0.6)),
        "bell": _c(0.6, (-6, 0), clip_p=(0.1, 0.3)),
        "passby": _c(0.8, (-10, -4), rate=(0.3, 0.8), lp=(1500, 3000)),
        "reverb": _c(1, (0, 0), rt60=(0.15, 0.35), wet=(0.15, 0.3)),
    },
    "bus": {
        "bed": _c(1, (-10, -4), lp=(3500, 8000), tilt=(-5, -3)),
        "engine": _c(1, (-2, 4), f0=(28, 55), lp=(250, 700)),
        "rumble": _c(1, (-6, 0), freq=(40, 100)),
        "babble": _c(0.6, (-12, -6), talkers=(2, 6)),
        "voices": _c(0.5, (-10, -4)),
        "passby": _c(0.8, (-10, -4), rate=(0.3, 1.0), lp=(1000, 2500)),
        "beeps": _c(0.5, (-8, -2), freq=(2000, 3000), clip_p=(0.05, 0.2)),
        "squeal": _c(0.2, (-12, -6), clip_p=(0.05, 0.15)),
        "reverb": _c(1, (0, 0), rt60=(0.15, 0.3), wet=(0.15, 0.3)),
    },
    "street_traffic": {
        "bed": _c(1, (-12, -6), lp=(7000, 14000), tilt=(-3.5, -2)),
        "passby": _c(1, (-2, 4), rate=(0.6, 1.5), lp=(4000, 12000), width=(0.2, 0.6)),
        "engine": _c(0.9, (-8, -2), f0=(30, 90), lp=(600, 2000)),
        "rumble": _c(0.8, (-8, -2)),
        "horn": _c(0.5, (-6, 0), clip_p=(0.05, 0.25)),
        "squeal": _c(0.3, (-10, -4), clip_p=(0.05, 0.15)),
        "steps": _c(0.3, (-16, -10)),
        "voices": _c(0.3, (-14, -8)),
        "birds": _c(0.15, (-14, -8), rate=(0.5, 1.5)),
        "wind": _c(0.3, (-12, -6)),
        "reverb": _c(1, (0, 0), rt60=(0.05, 0.2), wet=(0.05, 0.15)),
    },
    "street_pedestrian": {
        "bed": _c(1, (-12, -6), lp=(7000, 14000)),
        "babble": _c(1, (-6, 0), talkers=(3, 12)),
        "voices": _c(0.9, (-6, 0), count=(1, 3)),
        "steps": _c(1, (-4, 2), rate=(2, 3), walkers=(2, 4)),
        "passby": _c(0.7, (-10, -4), rate=(0.3, 1.0)),
        "birds": _c(0.15, (-14, -8)),
        "music": _c(0.15, (-12, -6)),
        "wind": _c(0.3, (-12, -6)),
        "reverb": _c(1, (0, 0), rt60=(0.15, 0.5), wet=(0.1, 0.25)),
    },
    "public_square": {
        "bed": _c(1, (-12, -6), lp=(7000, 14000), hump=(2, 8)),
        "babble": _c(1, (-8, -2), talkers=(2, 8)),
        "voices": _c(0.7, (-10, -4)),
        "steps": _c(0.9, (-10, -4), rate=(1.2, 2.2), walkers=(1, 2)),
        "passby": _c(0.6, (-12, -6), rate=(0.2, 0.7)),
        "birds": _c(0.6, (-10, -4), rate=(1, 3)),
        "wind": _c(0.6, (-10, -4)),
        "music": _c(0.1, (-14, -8)),
        "reverb": _c(1, (0, 0), rt60=(0.05, 0.25), wet=(0.05, 0.15)),
    },
    "park": {
        "bed": _c(1, (-14, -8), lp=(5000, 12000), tilt=(-6, -3)),
        "birds": _c(0.95, (-4, 2), rate=(2, 6)),
        "wind": _c(0.8, (-6, 0)),
        "passby": _c(0.5, (-14, -8), rate=(0.2, 0.6), lp=(1500, 4000), width=(0.8, 1.5)),
        "voices": _c(0.4, (-14, -8)),
        "steps": _c(0.3, (-12, -6), rate=(1.2, 2)),
        "reverb": _c(1, (0, 0), rt60=(0.02, 0.1), wet=(0.02, 0.08)),
    },
}

#: Each scene's confusable partner; locations are pulled towards it by up to ``confusion``.
_PARTNER = {
    "metro": "tram",
    "tram": "metro",
    "street_pedestrian": "public_square",
    "public_square": "street_pedestrian",
    "airport": "shopping_mall",
    "shopping_mall": "airport",
    "bus": "street_traffic",
    "street_traffic": "bus",
    "metro_station": "metro",
    "park": "public_square",
}

#: Clean-mix loudness range per scene (dBFS RMS, before devices); ranges overlap on purpose.
_LOUDNESS = {
    "airport": (-33, -27),
    "bus": (-29, -23),
    "metro": (-27, -21),
    "metro_station": (-31, -25),
    "park": (-37, -30),
    "public_square": (-34, -28),
    "shopping_mall": (-33, -27),
    "street_pedestrian": (-33, -27),
    "street_traffic": (-30, -24),
    "tram": (-29, -23),
}

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
_DEVICE_INDEX = {d: i for i, d in enumerate(DEVICES)}


# --------------------------------------------------------------------------------------------
# Spectral helpers
# --------------------------------------------------------------------------------------------

#: Decimation factors of the coarse grids that band-limited ingredients are rendered on; a grid
#: with factor ``d`` has ``_N // d`` samples at ``SAMPLE_RATE / d`` Hz and shares the 1-Hz bin
#: spacing of the full grid, so its spectrum drops into the low bins of the clip's spectrum.
_GRIDS = {d: np.arange(_N // d) * d / SAMPLE_RATE for d in (1, 2, 4, 20)}
_BANK_SIZE = 1 << 20


def _hp(fc: float, order: int = 2) -> np.ndarray:
    """Magnitude of a Butterworth-like high-pass at ``fc`` Hz."""
    ratio = fc / np.maximum(_F, 1e-3)
    return 1.0 / np.sqrt(1.0 + np.minimum(ratio, 1e6) ** (2 * order))


def _lp(fc: float, order: int = 2) -> np.ndarray:
    """Magnitude of a Butterworth-like low-pass at ``fc`` Hz."""
    return 1.0 / np.sqrt(1.0 + (_F / fc) ** (2 * order))


def _tilt(db_per_octave: float) -> np.ndarray:
    """Spectral tilt around 1 kHz."""
    return 10.0 ** (db_per_octave * _LOG2F / 20.0)


def _bump(fc: float, bw_octaves: float) -> np.ndarray:
    """Gaussian bump on a log-frequency axis (peak 1 at ``fc``)."""
    return np.exp(-0.5 * ((_LOG2F - math.log2(fc / 1000.0)) / bw_octaves) ** 2)


@lru_cache(maxsize=256)
def _shape(kind: str, a: float, b: float = 0.0, c: float = 0.0, d: float = 0.0) -> np.ndarray:
    """Cached magnitude responses of the ingredients (keyed by their quantised parameters)."""
    if kind == "bed":  # tilt, hp, lp, hump; unit mean power gain
        shape = _tilt(a) * _hp(b) * _lp(c, 3) * 10.0 ** (d * _bump(3000, 0.6) / 20.0)
        shape /= math.sqrt(float(np.mean(shape**2)))
    elif kind == "rumble":  # freq, bw
        shape = _bump(a, b) * _hp(20) * _lp(600, 3)
    elif kind == "engine":  # lp, res
        shape = _lp(a, 2) * _hp(20) * (1.0 + 2.0 * _bump(b, 0.4))
    elif kind == "babble":  # center
        shape = (_bump(a, 0.9) + 0.6 * _bump(a * 2.8, 0.6)) * _hp(150) * _lp(4000, 2)
    elif kind == "voice":  # center (first formant)
        formants = _bump(a, 0.35) + 0.7 * _bump(a * 2.2, 0.3) + 0.4 * _bump(a * 3.5, 0.25)
        shape = formants * _tilt(-9.0) * _hp(80, 2) * _lp(4500, 4)
    elif kind == "clicks":  # bright, octaves
        shape = _bump(a, b) * _hp(80)
    elif kind == "lowpass":  # lp, order
        shape = _lp(a, round(b)) * _hp(15)
    elif kind == "traffic":  # lp
        shape = _tilt(-3.0) * _lp(a, 2) * _hp(60) * (1.0 + 1.5 * _bump(1000, 0.8))
    else:  # pragma: no cover - programming error
        raise KeyError(kind)
    shape.setflags(write=False)
    return shape


@lru_cache(maxsize=32)
def _device_response(device: str, strength: float) -> np.ndarray:
    """Magnitude response (gain included) of a device model scaled by ``strength``."""
    spec = _DEVICES[device]
    hp = 20.0 * (spec["hp"] / 20.0) ** strength
    lp = 20000.0 * (spec["lp"] / 20000.0) ** strength
    db = spec["tilt"] * strength * _LOG2F + spec["gain"] * strength
    for fc, bw, gain in spec["peaks"]:
        db = db + gain * strength * _bump(fc, bw)
    response = _hp(hp, spec["order"]) * _lp(lp, spec["order"]) * 10.0 ** (db / 20.0)
    response.setflags(write=False)
    return response


@lru_cache(maxsize=2)
def _bank(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A long block of white Gaussian noise (and a complex view of another) for slicing."""
    rng = np.random.default_rng([seed, 99])
    real = rng.standard_normal(_BANK_SIZE)
    pairs = rng.standard_normal((2, _BANK_SIZE // 2)) * math.sqrt(_N / 2.0)
    real.setflags(write=False)
    cplx = pairs[0] + 1j * pairs[1]
    cplx.setflags(write=False)
    return real, cplx


def _white(rng: np.random.Generator, seed: int, n: int) -> np.ndarray:
    """``n`` samples of unit-variance white noise: a random slice of the seed's noise bank."""
    real = _bank(seed)[0]
    start = int(rng.integers(0, real.size - n))
    return real[start : start + n]


def _white_spectrum(rng: np.random.Generator, seed: int) -> np.ndarray:
    """rfft-domain white noise of a full clip (unit variance in time): a bank slice."""
    cplx = _bank(seed)[1]
    start = int(rng.integers(0, cplx.size - _F.size))
    return cplx[start : start + _F.size]


def _rms_spec(spec: np.ndarray, n: int) -> float:
    """RMS of the real ``n``-sample signal with rfft ``spec`` (Parseval)."""
    flat = np.ascontiguousarray(spec).view(np.float64)
    return math.sqrt(2.0 * float(np.sum(np.square(flat)))) / n


def _control(rng: np.random.Generator, rate: float, d: int, start: float = -0.5) -> np.ndarray:
    """Random control curve at ``rate`` Hz on grid ``d`` (linear interpolation, ~N(0, 1))."""
    n = math.ceil((1.0 - start) * rate) + 2
    return np.interp(_GRIDS[d], start + np.arange(n) / rate, rng.standard_normal(n))


class _Mix:
    """Accumulates one clip's spectrum from ingredients rendered on coarse grids."""

    def __init__(self, rng: np.random.Generator, seed: int) -> None:
        """Start an empty mix."""
        self.rng = rng
        self.seed = seed
        self.spec = np.zeros(_F.size, dtype=np.complex128)
        self.tones = {2: np.zeros(_N // 2), 4: np.zeros(_N // 4)}

    def white(self, d: int) -> np.ndarray:
        """White noise on grid ``d``."""
        return _white(self.rng, self.seed, _N // d)

    def add(
        self, x: np.ndarray, shape: np.ndarray | None, level: float, ref: float | None = None
    ) -> None:
        """Filter grid signal ``x`` by ``shape`` to RMS ``level * ref`` and add it.

        ``ref`` defaults to the RMS of ``x`` (white-noise excitations keep their loudness);
        without a ``shape`` the signal is added as is, scaled by ``level``.
        """
        n = x.size
        d = _N // n
        spec = np.fft.rfft(x)
        if n % 2 == 0:
            spec[-1] = 0.0
        if shape is not None:
            spec *= shape[: spec.size]
            rms = _rms_spec(spec, n)
            if rms <= 0.0:
                return
            if ref is None:
                ref = math.sqrt(float(np.mean(x**2)))
            spec *= level * ref / rms
        else:
            spec *= level
        self.spec[: spec.size] += spec * d

    def clicks(
        self,
        times: np.ndarray,
        amps: np.ndarray,
        tau: float,
        d: int,
        shape: np.ndarray,
        level: float,
    ) -> None:
        """Add decaying noise clicks (local RMS ``amps * level`` over ``tau`` s) at ``times``."""
        rate = SAMPLE_RATE / d
        length = int(4 * tau * rate) + 1
        n = _N // d
        x = np.zeros(n + length)
        decay = np.exp(-np.arange(length) / (tau * rate))
        for t0, amp in zip(times, amps, strict=True):
            i0 = round(t0 * rate)
            if -length < i0 < n:
                lo = max(i0, 0)
                x[lo : i0 + length] += amp * (self.white(d)[:length] * decay)[lo - i0 :]
        x = x[:n]
        if np.any(x):
            self.add(x, shape, level)

    def tone(
        self,
        start: float,
        dur: float,
        freq: float | Any,
        level: float,
        amps: tuple[float, ...] = (1.0,),
        ratios: tuple[float, ...] | None = None,
        decay: float | None = None,
        top: float | None = None,
    ) -> None:
        """Add a tone with partials ``amps`` at ``ratios`` (RMS ``level`` at the onset).

        ``freq`` is a number or a function of the time since ``start``; ``top`` bounds it.
        """
        ratios = ratios or tuple(float(k + 1) for k in range(len(amps)))
        highest = (top if top is not None else float(freq)) * max(ratios)
        d = 4 if highest < 0.45 * SAMPLE_RATE / 4 else 2
        nyquist = 0.45 * SAMPLE_RATE / d
        grid = _GRIDS[d]
        rate = SAMPLE_RATE / d
        i0 = max(0, math.ceil(start * rate))
        i1 = min(grid.size, math.ceil((start + dur) * rate))
        if i1 - i0 < 4:
            return
        t = grid[i0:i1] - start
        if callable(freq):
            phase = 2 * np.pi * np.cumsum(freq(t)) / rate
        else:
            phase = 2 * np.pi * float(freq) * t
        env = np.minimum(1.0, t / 0.01) * np.minimum(1.0, (dur - t) / 0.01)
        if decay is not None:
            env *= np.exp(-t / decay)
        base = top if top is not None else float(freq)
        norm = math.sqrt(sum(a * a for a in amps) / 2.0)
        sig = np.zeros(i1 - i0)
        for ratio, amp in zip(ratios, amps, strict=True):
            if base * ratio < nyquist:
                sig += amp * np.sin(ratio * phase)
        self.tones[d][i0:i1] += (level / norm) * env * sig

    def finish(self) -> np.ndarray:
        """Fold the tone buffers into the spectrum and return it."""
        for buffer in self.tones.values():
            if np.any(buffer):
                self.add(buffer, None, 1.0)
        return self.spec


# --------------------------------------------------------------------------------------------
# Locations and clips
# --------------------------------------------------------------------------------------------


def _draw_recipe(scene: str, u: np.ndarray, spread: float) -> dict[str, dict[str, float]]:
    """Draw one location's variant of a scene's recipe from uniforms ``u`` (components x k)."""
    out: dict[str, dict[str, float]] = {}
    recipe = _RECIPES[scene]
    for ci, comp in enumerate(_COMPONENTS):
        entry = recipe.get(comp)
        if entry is None or u[ci, 0] >= entry["p"]:
            continue
        ranges = {**_DEFAULTS[comp], "level": entry["level"]}
        ranges.update({k: v for k, v in entry.items() if k not in ("p", "level")})
        params = {}
        for pi, name in enumerate(sorted(ranges)):
            lo, hi = ranges[name]
            x = 0.5 + (u[ci, pi + 1] - 0.5) * spread
            if name in _LOG_PARAMS:
                params[name] = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
            else:
                params[name] = lo + x * (hi - lo)
        out[comp] = params
    return out


def _mix_recipes(
    own: dict[str, dict[str, float]], other: dict[str, dict[str, float]], w: float
) -> dict[str, dict[str, float]]:
    """Pull a location's recipe towards its partner's by share ``w`` (levels as amplitudes)."""
    mixed: dict[str, dict[str, float]] = {}
    for comp in _COMPONENTS:
        a, b = own.get(comp), other.get(comp)
        if a is None and b is None:
            continue
        if a is not None and b is not None:
            params = {}
            for k in a:
                if k == "level":
                    continue
                if k in _LOG_PARAMS:
                    params[k] = math.exp((1 - w) * math.log(a[k]) + w * math.log(b[k]))
                else:
                    params[k] = (1 - w) * a[k] + w * b[k]
            amp = (1 - w) * 10 ** (a["level"] / 20) + w * 10 ** (b["level"] / 20)
            params["level"] = 20 * math.log10(amp)
        else:
            src, share = (a, 1 - w) if a is not None else (b, w)
            if share <= 1e-3:
                continue
            params = dict(src)
            params["level"] = src["level"] + 20 * math.log10(share)
        mixed[comp] = params
    return mixed


@dataclass(frozen=True)
class _Clip:
    """One clean 1-second clip to synthesise and the devices that record it."""

    scene_idx: int
    city_idx: int
    loc: int  # location index within (scene, city)
    segment: int
    index: int
    devices: tuple[str, ...]
    names: tuple[str, ...] = field(default=())  # output file names, one per device


@lru_cache(maxsize=128)
def _location(config: SynthConfig, scene_idx: int, city_idx: int, loc: int) -> tuple:
    """Draw a location's recipe (own pulled towards partner), loudness and room filter."""
    scene = SCENES[scene_idx]
    rng = np.random.default_rng([config.seed, 1, scene_idx, city_idx, loc])
    u = rng.random((2, len(_COMPONENTS), _MAX_PARAMS))
    w = config.confusion * float(rng.random())
    loud_u, gain_u = rng.random(2)
    own = _draw_recipe(scene, u[0], config.location_spread)
    other = _draw_recipe(_PARTNER[scene], u[1], config.location_spread)
    recipe = _mix_recipes(own, other, w)
    city = np.random.default_rng([config.seed, 5, city_idx])
    c_tilt, c_lp, c_gain = city.standard_normal(3)
    bed = recipe["bed"]
    bed["tilt"] += 0.5 * c_tilt * config.location_spread
    bed["lp"] *= 2.0 ** (0.25 * c_lp * config.location_spread)
    lo, hi = _LOUDNESS[scene]
    loudness = lo + loud_u * (hi - lo) + (2 * gain_u - 1) * config.gain_jitter_db + 1.5 * c_gain
    rev = recipe["reverb"]
    n = min(_N, int(rev["rt60"] * SAMPLE_RATE) + 1)
    ir = rng.standard_normal(n) * np.exp(-6.91 * np.arange(n) / (rev["rt60"] * SAMPLE_RATE))
    room = np.fft.rfft(ir, _N) * (math.sqrt(max(rev["wet"], 0.0)) / math.sqrt(np.sum(ir**2)))
    room += math.sqrt(max(1.0 - rev["wet"], 0.0))
    room.setflags(write=False)
    return recipe, float(loudness), room


def _q(x: float, step: float = 0.01) -> float:
    """Quantise a shape parameter (keeps the shape cache effective, rounding is negligible)."""
    return round(x / step) * step


def _synth_clean(config: SynthConfig, clip: _Clip) -> np.ndarray:
    """Synthesise the clean scene spectrum (rfft) of one clip."""
    recipe, loudness, room = _location(config, clip.scene_idx, clip.city_idx, clip.loc)
    key = [clip.scene_idx, clip.city_idx, clip.loc, clip.segment]
    seg_u = np.random.default_rng([config.seed, 2, *key]).random((len(_COMPONENTS), 2))
    rng = np.random.default_rng([config.seed, 3, *key, clip.index])
    mix = _Mix(rng, config.seed)
    jitter = config.clip_jitter

    for ci, comp in enumerate(_COMPONENTS):
        p = recipe.get(comp)
        if p is None or comp == "reverb":
            continue
        db = p["level"] + jitter * (3.0 * (seg_u[ci, 0] - 0.5) + 1.5 * rng.standard_normal())
        if comp == "bed":
            shape = _shape(
                "bed", _q(p["tilt"]), _q(p["hp"], 1), _q(p["lp"], 10), _q(p["hump"], 0.1)
            )
            mix.spec += _white_spectrum(rng, config.seed) * (shape * 10.0 ** (db / 20.0))
            continue
        level = 10.0 ** ((db + config.event_level_db) / 20.0)
        if "clip_p" in p and rng.random() >= p["clip_p"]:
            continue
        _INGREDIENTS[comp](mix, p, level, float(seg_u[ci, 1]))

    spec = mix.finish() * room
    gain_db = loudness + config.gain_jitter_db / 3.0 * (2 * rng.random() - 1)
    return spec * (10 ** (gain_db / 20) / (_rms_spec(spec, _N) + 1e-12))


# --------------------------------------------------------------------------------------------
# Ingredients: each renders into a _Mix given its parameters, level and a per-segment uniform.
# --------------------------------------------------------------------------------------------


def _rumble(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Low-frequency band noise with slow amplitude modulation (vehicles, ventilation)."""
    t = _GRIDS[20]
    env = 1.0 + p["am_depth"] * np.sin(2 * np.pi * p["am_rate"] * t + 6.3 * seg)
    env *= np.exp(0.15 * _control(mix.rng, 2.0, 20))
    mix.add(mix.white(20) * env, _shape("rumble", _q(p["freq"], 1), _q(p["bw"])), level)


def _engine(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Combustion engine: jittered pulse train at a drifting f0 through a resonant low-pass."""
    rng, t = mix.rng, _GRIDS[4]
    f0 = p["f0"] * (0.9 + 0.2 * seg)
    slope = float(rng.choice((-1.0, 1.0)))
    f0t = f0 * (1 + p["drift"] * (slope * (t - 0.5) + 0.3 * _control(rng, 1.5, 4)))
    phase = np.cumsum(f0t) * (4 / SAMPLE_RATE) + rng.random()
    idx = np.flatnonzero(np.diff(np.floor(phase))) + 1
    train = np.zeros(t.size)
    train[idx] = 1.0 + 0.3 * rng.standard_normal(idx.size)
    mix.add(train, _shape("engine", _q(p["lp"], 10), _q(p["res"], 1)), level, ref=1.0)


def _whine(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Electric-motor whine: three partials gliding up or down in pitch."""
    glide = p["glide"] * float(mix.rng.choice((-1.0, 1.0)))
    base = p["freq"] * (0.95 + 0.1 * seg)
    top = base * 2.0 ** abs(glide)
    mix.tone(0.0, 1.0, lambda t: base * 2.0 ** (glide * (t - 0.5)), level, (1.0, 0.5, 0.3), top=top)


def _clacks(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Rail joints: pairs of low thumps (two axles) at a steady rate."""
    rng = mix.rng
    period = 1.0 / p["rate"]
    starts = rng.uniform(-period, 0) + np.arange(int(1.0 / period) + 2) * period
    times = np.concatenate([starts, starts + p["gap"]])
    amps = 10 ** (rng.uniform(-6, 0, times.size) / 20)
    mix.clicks(times, amps, p["decay"], 4, _shape("lowpass", _q(p["lp"], 10), 2), level)


def _babble(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Speech babble: formant-shaped noise modulated at syllable rate by several talkers."""
    rng = mix.rng
    talkers = max(1, round(p["talkers"]))
    n_ctrl = math.ceil(1.5 * p["rate"]) + 2
    ctrl = np.maximum(rng.standard_normal((talkers, n_ctrl)) + 0.3, 0.0) ** 1.5
    env = np.interp(_GRIDS[4], -0.25 + np.arange(n_ctrl) / p["rate"], ctrl.mean(axis=0))
    env /= math.sqrt(float(np.mean(env**2))) + 1e-9
    mix.add(mix.white(4) * env, _shape("babble", _q(p["center"], 1)), level)


def _voices(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Nearby talkers: voiced pulse trains with intonation, formants and syllable rhythm."""
    rng, t = mix.rng, _GRIDS[4]
    rate = SAMPLE_RATE / 4
    x = np.zeros(t.size)
    power = np.zeros(t.size)
    for _ in range(max(1, round(p["count"]))):
        f0t = p["f0"] * rng.uniform(0.85, 1.2) * np.exp(0.12 * _control(rng, 4.0, 4))
        phase = np.cumsum(f0t) / rate + rng.random()
        idx = np.flatnonzero(np.diff(np.floor(phase))) + 1
        env = np.zeros(t.size)
        onset = rng.uniform(-0.3, 0.1)
        while onset < 1.0:
            dur = rng.uniform(0.08, 0.25)
            i0, i1 = max(0, math.ceil(onset * rate)), min(t.size, math.ceil((onset + dur) * rate))
            if i1 > i0:
                env[i0:i1] += rng.uniform(0.4, 1.0) * np.sin(np.pi * (t[i0:i1] - onset) / dur) ** 2
            onset += dur + rng.exponential(1.0 / p["rate"]) * (3.0 if rng.random() < 0.15 else 0.5)
        env *= 10 ** (rng.uniform(-6, 0) / 20)
        x[idx] += env[idx]
        power += env**2
    mix.add(x, _shape("voice", _q(p["center"], 1)), level, ref=math.sqrt(float(np.mean(power))))


def _steps(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Footsteps: short bright clicks from one or more walkers at a walking rate."""
    rng = mix.rng
    times = []
    for _ in range(max(1, round(p["walkers"]))):
        rate = p["rate"] * rng.uniform(0.85, 1.15)
        n = int(rate) + 3
        times.append(rng.uniform(-1 / rate, 0) + np.arange(n) / rate + rng.normal(0, 0.02, n))
    times = np.concatenate(times)
    amps = 10 ** (rng.uniform(-8, 0, times.size) / 20)
    mix.clicks(times, amps, p["decay"], 2, _shape("clicks", _q(p["bright"], 1), 1.2), level)


def _luggage(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Rolling luggage or trolleys: a fast train of tiny clicks for part of the clip."""
    rng = mix.rng
    start, dur = rng.uniform(-0.3, 0.7), rng.uniform(0.3, 1.0)
    n = int(dur * p["rate"]) + 1
    times = start + np.arange(n) / p["rate"] + rng.normal(0, 0.004, n)
    amps = 10 ** (rng.uniform(-8, 0, n) / 20)
    mix.clicks(times, amps, 0.006, 2, _shape("clicks", _q(p["bright"], 1), 1.0), level)


_CHIME_PATTERNS = ((1.0, 0.8), (1.0, 1.25, 1.5), (1.5, 1.25, 1.0), (1.0, 1.5, 1.0))


def _chime(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Announcement chime: two or three decaying bell notes (pattern fixed per location)."""
    notes = _CHIME_PATTERNS[min(3, int(p["pattern"]))]
    start = mix.rng.uniform(-0.6, 0.8)
    for k, ratio in enumerate(notes):
        mix.tone(start + 0.35 * k, 0.9, p["pitch"] * ratio, level, (1.0, 0.35, 0.15), decay=0.35)


def _bell(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Tram bell: one to three bright metallic dings (inharmonic partials)."""
    rng = mix.rng
    start = rng.uniform(-0.2, 0.8)
    for _ in range(max(1, round(p["count"] * rng.uniform(0.7, 1.3)))):
        mix.tone(
            start, 0.6, p["pitch"], level, (1.0, 0.5, 0.25), ratios=(1.0, 2.76, 5.4), decay=0.25
        )
        start += rng.uniform(0.15, 0.25)


def _beeps(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Door or stop-request beeps: a short series of square-ish tone pips."""
    rng = mix.rng
    count = max(1, round(p["count"] * rng.uniform(0.7, 1.3)))
    gap, start = rng.uniform(0.18, 0.3), rng.uniform(-0.5, 0.7)
    for k in range(count):
        mix.tone(start + k * gap, 0.1, p["freq"], level, (1.0, 0.33, 0.2), ratios=(1.0, 3.0, 5.0))


def _squeal(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Braking squeal: a high tone with vibrato, fading over up to a second."""
    rng = mix.rng
    dur = p["dur"] * rng.uniform(0.7, 1.3)
    start = rng.uniform(-0.3, 0.9)
    vib_rate, base = rng.uniform(4, 8), p["freq"] * rng.uniform(0.9, 1.1)
    mix.tone(
        start,
        dur,
        lambda t: base * (1 + 0.015 * np.sin(2 * np.pi * vib_rate * t)),
        level,
        (1.0, 0.3),
        decay=dur,
        top=base * 1.02,
    )


def _passby(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Passing cars: broadband tyre/engine noise swelling and fading (near and far)."""
    rng, t = mix.rng, _GRIDS[2]
    n = rng.poisson(p["rate"] * 3.0)
    env = np.full(t.size, 0.05)
    for _ in range(n):
        c0, w0 = rng.uniform(-1.0, 2.0), p["width"] * rng.uniform(0.7, 1.3)
        env += 10 ** (rng.uniform(-12, 0) / 20) / (1.0 + ((t - c0) / w0) ** 2)
    mix.add(mix.white(2) * env, _shape("traffic", _q(p["lp"], 10)), level)


def _birds(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Birdsong: trills of fast frequency-modulated chirps (species fixed per location)."""
    rng = mix.rng
    for _ in range(rng.poisson(p["rate"])):
        start, n = rng.uniform(-0.2, 1.0), int(rng.integers(2, 7))
        f0 = p["freq"] * rng.uniform(0.85, 1.15)
        sweep = p["sweep"]
        for _k in range(n):
            dur = p["dur"] * rng.uniform(0.8, 1.2)
            mix.tone(
                start,
                dur,
                lambda t, f0=f0, dur=dur, sweep=sweep: f0 * 2.0 ** (sweep * (t / dur - 0.5)),
                level * rng.uniform(0.5, 1.0),
                (1.0, 0.2),
                decay=dur / 2,
                top=f0 * 2.0 ** (abs(sweep) / 2),
            )
            start += dur + rng.uniform(0.03, 0.08)


def _wind(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Wind: gusty low-passed noise."""
    env = np.exp(p["gust"] * _control(mix.rng, 1.0, 20))
    env /= math.sqrt(float(np.mean(env**2)))
    mix.add(mix.white(20) * env, _shape("lowpass", _q(p["lp"], 1), 2), level)


_SCALE = (1.0, 9 / 8, 5 / 4, 4 / 3, 3 / 2, 5 / 3, 15 / 8, 2.0)


def _music(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Background music: melody notes with harmonics over a sustained bass note."""
    rng = mix.rng
    step = 1.0 / p["tempo"]
    amps = tuple(p["bright"] ** k for k in range(5))
    t0 = rng.uniform(-step, 0)
    while t0 < 1.0:
        pitch = p["pitch"] * _SCALE[int(rng.integers(len(_SCALE)))]
        mix.tone(t0, step * 1.2, pitch, level, amps, decay=step)
        t0 += step
    mix.tone(0.0, 1.0, p["pitch"] / 2, 0.6 * level, (1.0, 0.5))


def _horn(mix: _Mix, p: dict, level: float, seg: float) -> None:
    """Car horn: two buzzy tones a major third apart."""
    rng = mix.rng
    start, dur = rng.uniform(-0.2, 0.8), rng.uniform(0.15, 0.6)
    amps = tuple(1.0 / (k + 1) for k in range(6))
    mix.tone(start, dur, p["freq"], level, amps)
    mix.tone(start, dur, p["freq"] * 1.26, 0.8 * level, amps)


_INGREDIENTS = {
    "rumble": _rumble,
    "engine": _engine,
    "whine": _whine,
    "clacks": _clacks,
    "babble": _babble,
    "voices": _voices,
    "steps": _steps,
    "luggage": _luggage,
    "chime": _chime,
    "bell": _bell,
    "beeps": _beeps,
    "squeal": _squeal,
    "passby": _passby,
    "birds": _birds,
    "wind": _wind,
    "music": _music,
    "horn": _horn,
}


# --------------------------------------------------------------------------------------------
# Devices and files
# --------------------------------------------------------------------------------------------


def _record(
    spec: np.ndarray, device: str, strength: float, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pass a spectrum through a device model; return (linear output spectrum, samples)."""
    model = _DEVICES[device]
    response = _device_response(device, strength)
    noise = 10 ** ((-90.0 + (model["noise"] + 90.0) * strength) / 20)
    out = (spec + _white_spectrum(rng, seed) * noise) * response
    samples = np.fft.irfft(out, _N)
    drive = model["drive"] * strength
    if drive > 0:
        ref = 3.0 * math.sqrt(float(np.mean(samples**2))) + 1e-9
        samples = ref * np.tanh(drive * samples / ref) / drive
    return out, np.clip(samples, -_FULL_SCALE, _FULL_SCALE)


def _render(config: SynthConfig, root: str, clip: _Clip) -> int:
    """Synthesise one clip, record it on its devices and write the WAV files."""
    clean = _synth_clean(config, clip)
    key = [config.seed, 4, clip.scene_idx, clip.city_idx, clip.loc, clip.segment, clip.index]
    reference: np.ndarray | None = None
    for device, name in zip(clip.devices, clip.names, strict=True):
        if device in ("a", "b", "c"):
            source = clean
        else:  # simulated from the device-a recording of the same clip
            if reference is None:
                rng_a = np.random.default_rng([*key, 0])
                reference = _record(clean, "a", 1.0, rng_a, config.seed)[0]
            source = reference
        if device == "a":
            strength = 1.0
        elif device in ("s4", "s5", "s6"):
            strength = config.unseen_strength
        else:
            strength = config.device_strength
        rng = np.random.default_rng([*key, _DEVICE_INDEX[device]])
        out, samples = _record(source, device, strength, rng, config.seed)
        if device == "a":
            reference = out
        # encoded in memory, written by Python: a full disk is an OSError naming the file, not
        # libsndfile's "System error."
        wav = io.BytesIO()
        soundfile.write(
            wav, samples.astype(np.float32), SAMPLE_RATE, subtype="PCM_24", format="WAV"
        )
        path = os.path.join(root, name)
        try:
            with open(path, "wb") as fh:
                fh.write(wav.getbuffer())
        except OSError as exc:
            raise _ClipWriteError(exc.errno, exc.strerror or str(exc), path) from None
    return len(clip.devices)


class _ClipWriteError(OSError):
    """A clip could not be written (a full disk, a quota): the disk's fault, not the workers',
    so generation stops instead of starting over in one process."""


def _render_batch(config: SynthConfig, root: str, clips: list[_Clip]) -> int:
    """Render a batch of clips (worker entry point)."""
    return sum(_render(config, root, clip) for clip in clips)


# --------------------------------------------------------------------------------------------
# Planning and writing
# --------------------------------------------------------------------------------------------


def _clip_name(scene: str, city: str, loc_id: int, segment: int, index: int, device: str) -> str:
    """The TAU22 file name of a clip."""
    return f"audio/{scene}-{city}-{loc_id}-{segment}-{index}-{device}.wav"


def _plan(config: SynthConfig) -> tuple[list[_Clip], list[dict], list[dict]]:
    """Enumerate the clips; return (clips to render, train rows, evaluate rows)."""
    n_loc = config.train_locations + config.eval_locations
    train_a: list[tuple[_Clip, np.ndarray]] = []
    eval_clips: list[_Clip] = []
    for s, _scene in enumerate(SCENES):
        for c, _city in enumerate(config.cities):
            for k in range(n_loc):
                is_train = k < config.train_locations
                n_seg = config.train_segments if is_train else config.eval_segments
                per_seg = (
                    config.train_clips_per_segment if is_train else config.eval_clips_per_segment
                )
                for j in range(n_seg):
                    pick = np.random.default_rng([config.seed, 6, s, c, k, j])
                    for idx in sorted(int(i) for i in pick.choice(10, per_seg, replace=False)):
                        if is_train:
                            keys = np.random.default_rng([config.seed, 7, s, c, k, j, idx])
                            train_a.append((_Clip(s, c, k, j, idx, ("a",)), keys.random(6)))
                        else:
                            eval_clips.append(_Clip(s, c, k, j, idx, DEVICES))
    # Each extra training device records the same number of clips: those with the lowest keys.
    n_extra = round(config.parallel_fraction * len(train_a))
    if config.parallel_fraction > 0:
        n_extra = max(1, n_extra)
    chosen: dict[int, list[str]] = {}
    for d, device in enumerate(_TRAIN_EXTRA):
        order = np.argsort([keys[d] for _, keys in train_a], kind="stable")
        for i in order[:n_extra]:
            chosen.setdefault(int(i), []).append(device)
    segment_keys = {}
    clips: list[_Clip] = []
    train_rows: list[dict] = []
    eval_rows: list[dict] = []
    for i, (clip, keys) in enumerate(train_a):
        devices = ("a", *[d for d in _TRAIN_EXTRA if d in chosen.get(i, [])])
        seg = (clip.scene_idx, clip.city_idx, clip.loc, clip.segment)
        segment_keys.setdefault(seg, float(keys[5]))
        named = _named(config, _Clip(*seg[:3], clip.segment, clip.index, devices), n_loc)
        clips.append(named)
        for device, name in zip(named.devices, named.names, strict=True):
            train_rows.append(_row(config, named, device, name, n_loc, segment_keys[seg]))
    for clip in eval_clips:
        named = _named(config, clip, n_loc)
        clips.append(named)
        for device, name in zip(named.devices, named.names, strict=True):
            eval_rows.append(_row(config, named, device, name, n_loc, 0.0))
    return clips, train_rows, eval_rows


def _named(config: SynthConfig, clip: _Clip, n_loc: int) -> _Clip:
    """Attach output file names to a clip."""
    loc_id = clip.scene_idx * n_loc + clip.loc
    names = tuple(
        _clip_name(
            SCENES[clip.scene_idx],
            config.cities[clip.city_idx],
            loc_id,
            clip.segment,
            clip.index,
            device,
        )
        for device in clip.devices
    )
    return _Clip(
        clip.scene_idx, clip.city_idx, clip.loc, clip.segment, clip.index, clip.devices, names
    )


def _row(config: SynthConfig, clip: _Clip, device: str, name: str, n_loc: int, key: float) -> dict:
    """One metadata row."""
    city = config.cities[clip.city_idx]
    return {
        "filename": name,
        "scene_label": SCENES[clip.scene_idx],
        "identifier": f"{city}-{clip.scene_idx * n_loc + clip.loc}",
        "source_label": device,
        "key": key,
    }


def _write_tsv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Write a TAB-separated file with ``\\n`` line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_metadata(
    root: Path, config: SynthConfig, train_rows: list[dict], eval_rows: list[dict]
) -> None:
    """Write meta.csv, the fold files, the DCASE 2024 split files and synth.json."""
    meta = sorted(train_rows + eval_rows, key=lambda r: r["filename"])
    _write_tsv(
        root / "meta.csv",
        ("filename", "scene_label", "identifier", "source_label"),
        [(r["filename"], r["scene_label"], r["identifier"], r["source_label"]) for r in meta],
    )
    train = sorted(train_rows, key=lambda r: r["filename"])
    evaluate = sorted(eval_rows, key=lambda r: r["filename"])
    setup = root / "evaluation_setup"
    _write_tsv(
        setup / "fold1_train.csv",
        ("filename", "scene_label"),
        [(r["filename"], r["scene_label"]) for r in train],
    )
    _write_tsv(
        setup / "fold1_evaluate.csv",
        ("filename", "scene_label"),
        [(r["filename"], r["scene_label"]) for r in evaluate],
    )
    _write_tsv(setup / "fold1_test.csv", ("filename",), [(r["filename"],) for r in evaluate])
    # Nested, scene-stratified subsets of the training split, drawn whole segment by segment.
    ranked = {
        scene: sorted(
            (r for r in train if r["scene_label"] == scene), key=lambda r: (r["key"], r["filename"])
        )
        for scene in SCENES
    }
    for percent in _SPLIT_PERCENTS:
        subset = []
        for rows in ranked.values():
            subset.extend(rows[: max(1, math.ceil(len(rows) * percent / 100.0))])
        subset.sort(key=lambda r: r["filename"])
        _write_tsv(
            root / "split_setup" / f"split{percent}.csv",
            ("filename", "scene_label"),
            [(r["filename"], r["scene_label"]) for r in subset],
        )
    info = {"version": SYNTH_VERSION, "config": asdict(config)}
    (root / "synth.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _batches(clips: list[_Clip], size: int) -> Iterator[list[_Clip]]:
    """Split the clip list into batches of ``size``."""
    for i in range(0, len(clips), size):
        yield clips[i : i + size]


def generate(
    out: str | Path,
    config: SynthConfig = SynthConfig(),
    progress: bool = True,
    *,
    workers: int | None = None,
) -> Path:
    """Generate the synthetic dataset in the TAU22 layout, atomically.

    Args:
        out: Output folder; must not exist or be empty. It appears only once complete.
        config: Size, seed and difficulty.
        progress: Show a tqdm progress bar (files written).
        workers: Worker processes; ``None`` picks the CPU count for large datasets and 1 for
            small ones. The output does not depend on it.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        DatasetError: ``out`` exists and is not an empty folder, or ``config`` is invalid.
    """
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise DatasetError(
                f"synthetic dataset target {out} exists and is not a folder; "
                "pass a new or empty folder"
            )
        if any(out.iterdir()):
            raise DatasetError(
                f"synthetic dataset target {out} is not empty; "
                "pass a new or empty folder (or delete it to regenerate)"
            )
        out.rmdir()
    clips, train_rows, eval_rows = _plan(config)
    total = sum(len(c.devices) for c in clips)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(clips) >= 400 else 1
    if not isinstance(workers, int) or workers < 1:
        raise DatasetError(f"workers={workers!r} is invalid; use an integer >= 1 or None")
    with atomic_dir(out) as tmp:
        (tmp / "audio").mkdir()
        bar = tqdm(
            total=total,
            unit="file",
            desc="generating the synthetic TAU22 dataset (once, then cached)",
            disable=not progress,
        )
        try:
            _render_all(config, tmp, clips, workers, bar)
        finally:
            bar.close()
        _write_metadata(tmp, config, train_rows, eval_rows)
        # written last: the manifest marks the folder complete and lets a later load check it
        write_manifest(tmp)
    return out


def _render_all(
    config: SynthConfig, root: Path, clips: list[_Clip], workers: int, bar: Any
) -> None:
    """Render every clip, in worker processes when ``workers > 1`` (serially if that fails)."""
    if workers > 1:
        try:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [
                    pool.submit(_render_batch, config, str(root), batch)
                    for batch in _batches(clips, 32)
                ]
                for future in concurrent.futures.as_completed(futures):
                    bar.update(future.result())
            return
        except _ClipWriteError:
            raise
        except (OSError, BrokenProcessPool) as exc:
            # Output does not depend on the worker count: redo everything in this process.
            _LOG.warning("worker processes failed (%s); generating in one process", exc)
            bar.reset()
    for batch in _batches(clips, 16):
        bar.update(_render_batch(config, str(root), batch))


def _remove(path: Path) -> None:
    """Delete a cache folder: renamed away first, so no one sees it half-deleted."""
    trash = path.with_name(f".{path.name}.{os.getpid()}.trash")
    try:
        os.replace(path, trash)
    except FileNotFoundError:  # another process removed it already
        return
    shutil.rmtree(trash, ignore_errors=True)


def default_dataset(progress: bool = True, config: SynthConfig = SynthConfig()) -> Path:
    """Return the cached synthetic dataset for ``config``, generating it on first use.

    The dataset lives in ``cache_root()/datasets/synth-<key>`` where the key hashes
    :data:`SYNTH_VERSION` and the config. A cached copy is checked against its manifest (every
    file present, at its recorded size) on each call; one that fails (half-generated by an older
    nas-asc, truncated or partly deleted) is removed with a one-line warning and generated again.

    Args:
        progress: Show a progress bar while generating.
        config: Size, seed and difficulty.

    Returns:
        The dataset root.
    """
    path = cache_root() / "datasets" / f"synth-{content_key(SYNTH_VERSION, asdict(config))}"
    if path.exists():
        problem = check_manifest(path)
        if problem is None:
            return path
        _LOG.warning("cached synthetic dataset %s %s; generating it again", path, problem)
        _remove(path)
    try:
        return generate(path, config, progress)
    except DatasetError:
        if (path / "meta.csv").is_file():  # another process finished it first
            return path
        raise


# --- a layout of the real dataset's size ------------------------------------------------------

# 10-second segments per device of the TAU Urban Acoustic Scenes 2020 Mobile development set,
# which TAU22 cuts into ten 1-second clips each: fold1 train, fold1 evaluate, and the recordings
# that meta.csv lists in neither fold
_REAL_SEGMENTS = {
    "train": {"a": 10215, "b": 749, "c": 748, "s1": 750, "s2": 750, "s3": 750},
    "evaluate": {d: 329 if d in ("b", "c") else 330 for d in DEVICES},
    "unused": {"a": 3855, "s4": 750, "s5": 750, "s6": 750},
}
_REAL_CITIES = (
    "barcelona",
    "helsinki",
    "lisbon",
    "london",
    "lyon",
    "milan",
    "paris",
    "prague",
    "stockholm",
    "vienna",
)
_REAL_LOCATION_BASE = {"train": 0, "evaluate": 500, "unused": 700}  # disjoint location ids


def _realsize_plan(fraction: float) -> dict[str, list[tuple[str, str, str, str, int]]]:
    """Rows ``(filename, scene, identifier, device, segment number)`` of each part ("train",
    "evaluate", "unused") of a TAU22 layout of ``fraction`` times the real size."""
    parts = {}
    for part, per_device in _REAL_SEGMENTS.items():
        counts = {d: max(1, math.floor(n * fraction + 0.5)) for d, n in per_device.items()}
        n_segments = max(counts.values())
        rows = []
        for k in range(n_segments):  # device recordings run parallel to the first segments
            s, j = k % len(SCENES), k // len(SCENES)
            city = _REAL_CITIES[j % len(_REAL_CITIES)]
            m = j // len(_REAL_CITIES)  # this (scene, city)'s m-th segment, ten per location
            location = 1000 * s + _REAL_LOCATION_BASE[part] + m // 10
            for device, count in counts.items():
                if k >= count:
                    continue
                for index in range(10):
                    name = f"audio/{SCENES[s]}-{city}-{location}-{m}-{index}-{device}.wav"
                    rows.append((name, SCENES[s], f"{city}-{location}", device, k))
        parts[part] = rows
    return parts


def realsize_layout(
    out: str | Path,
    source: str | Path | None = None,
    *,
    fraction: float = 1.0,
    link: str = "hard",
    progress: bool = True,
) -> Path:
    """Build a TAU22 layout of the real dataset's size whose clips are links to a few others.

    The layout has the real development set's metadata sizes: 230,350 rows in ``meta.csv``,
    139,620 clips in ``fold1_train.csv`` (devices a, b, c, s1-s3) and 29,680 in
    ``fold1_evaluate.csv`` and ``fold1_test.csv`` (all nine devices), 61,050 clips listed in
    neither fold, as ten 1-second clips of each 10-second segment with parallel recordings on
    the other devices, names ``audio/<scene>-<city>-<location>-<segment>-<index>-<device>.wav``,
    ten cities, disjoint training and evaluation locations, and nested ``split_setup`` subsets
    (``split5`` ... ``split100``, whole segments, drawn per scene). Every clip of ``meta.csv`` is
    a link to a clip of ``source`` of the same scene and device where it has one, so the layout
    costs inodes, not audio: it measures what the data pipeline does at the real size (reading,
    features, memory), not what a model learns from it.

    Args:
        out: Output folder; must not exist or be empty. It appears only once complete.
        source: A TAU22 dataset root whose ``audio/*.wav`` clips are linked to; ``None``: the
            embedded synthetic dataset (:func:`default_dataset`).
        fraction: Scale of every count, in ``(0, 1]`` (segments rounded, at least one per
            device and part): 1.0 is the real size, 0.1 a tenth of it.
        link: ``"hard"`` (``out`` on the file system of ``source``) or ``"symbolic"``.
        progress: Show a progress bar (files linked).

    Returns:
        ``out`` as a :class:`~pathlib.Path`; load it with
        :func:`~nas_asc.data.tau22.load_tau22`.

    Raises:
        DatasetError: ``out`` exists and is not an empty folder, ``source`` holds no clips, a
            link cannot be made, or ``fraction`` or ``link`` is invalid.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise DatasetError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise DatasetError(f"fraction must be in (0, 1], got {fraction}")
    if link not in ("hard", "symbolic"):
        raise DatasetError(f"link must be 'hard' or 'symbolic', got {link!r}")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(
            f"layout target {out} exists and is not an empty folder; pass a new or empty folder"
        )
    source = default_dataset(progress) if source is None else Path(source).expanduser()
    pools = _source_clips(source)
    parts = _realsize_plan(fraction)
    rows = sorted(row for part in parts.values() for row in part)
    if out.exists():
        out.rmdir()
    with atomic_dir(out) as tmp:
        (tmp / "audio").mkdir()
        used: dict[tuple[str, str], int] = {}
        bar = tqdm(total=len(rows), unit="file", desc="real-size layout", disable=not progress)
        try:
            for name, scene, _, device, _ in rows:
                pool = pools.get((scene, device)) or pools.get((scene, "")) or pools[("", "")]
                n = used.get((scene, device), 0)
                used[(scene, device)] = n + 1
                _link(pool[n % len(pool)], tmp / name, link)
                bar.update()
        finally:
            bar.close()
        _write_realsize_metadata(tmp, rows, parts)
    return out


def _source_clips(source: Path) -> dict[tuple[str, str], list[Path]]:
    """The clips of ``source/audio`` by (scene, device), by (scene, "") and all of them."""
    from nas_asc.data.tau22 import parse_filename

    try:
        paths = sorted((source / "audio").glob("*.wav"))
    except OSError as exc:
        raise DatasetError(f"source dataset {source} cannot be read ({exc})") from exc
    pools: dict[tuple[str, str], list[Path]] = {}
    for path in paths:
        try:
            clip = parse_filename(path.name)
        except DatasetError:
            continue  # not a TAU22 name: not linked to
        pools.setdefault((clip.scene, clip.device), []).append(path.resolve())
        pools.setdefault((clip.scene, ""), []).append(path.resolve())
        pools.setdefault(("", ""), []).append(path.resolve())
    if not pools:
        raise DatasetError(
            f"source dataset {source} has no TAU22 clips in {source / 'audio'}; pass a dataset "
            "root (e.g. one made by nas-asc data synth)"
        )
    return pools


def _link(target: Path, name: Path, link: str) -> None:
    try:
        if link == "hard":
            os.link(target, name)
        else:
            os.symlink(target, name)
    except OSError as exc:
        fix = (
            "put the layout on the file system of the source dataset or use symbolic links"
            if link == "hard"
            else "check the folder's permissions"
        )
        raise DatasetError(
            f"cannot {link}-link {target} as {name} ({exc.strerror or exc}); {fix}"
        ) from exc


def _write_realsize_metadata(root: Path, rows: list[tuple], parts: dict[str, list[tuple]]) -> None:
    """meta.csv, the fold1 files and nested DCASE 2024 split files of a real-size layout."""
    _write_tsv(
        root / "meta.csv",
        ("filename", "scene_label", "identifier", "source_label"),
        [(name, scene, identifier, device) for name, scene, identifier, device, _ in rows],
    )
    train, evaluate = sorted(parts["train"]), sorted(parts["evaluate"])
    setup = root / "evaluation_setup"
    _write_tsv(setup / "fold1_train.csv", ("filename", "scene_label"), [r[:2] for r in train])
    _write_tsv(setup / "fold1_evaluate.csv", ("filename", "scene_label"), [r[:2] for r in evaluate])
    _write_tsv(setup / "fold1_test.csv", ("filename",), [r[:1] for r in evaluate])
    # whole training segments, in a fixed random order per scene: each split holds the smaller
    segments: dict[str, dict[int, None]] = {}
    for _, scene, _, _, k in train:
        segments.setdefault(scene, {})[k] = None
    rng = np.random.default_rng(0)
    ranked = {}
    for scene, ks in sorted(segments.items()):
        order = list(ks)
        ranked[scene] = [order[i] for i in rng.permutation(len(order))]
    for percent in _SPLIT_PERCENTS:
        keep = {
            (scene, k)
            for scene, ks in ranked.items()
            for k in ks[: max(1, math.ceil(len(ks) * percent / 100.0))]
        }
        _write_tsv(
            root / "split_setup" / f"split{percent}.csv",
            ("filename", "scene_label"),
            [r[:2] for r in train if (r[1], r[4]) in keep],
        )
