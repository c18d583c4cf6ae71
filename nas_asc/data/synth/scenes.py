"""What a synthetic clip sounds like: the scene recipes, each location's variant of its scene
(pulled towards its confusable partner) and the clean clip (:func:`synth_clean`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from nas_asc.data.synth.config import SynthConfig
from nas_asc.data.synth.sources import (
    CLIP_SAMPLES,
    INGREDIENTS,
    Mix,
    quantise,
    rms_spec,
    spectral_shape,
    white_spectrum,
)
from nas_asc.data.tau22 import SAMPLE_RATE, SCENES

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
class Clip:
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
    n = min(CLIP_SAMPLES, int(rev["rt60"] * SAMPLE_RATE) + 1)
    ir = rng.standard_normal(n) * np.exp(-6.91 * np.arange(n) / (rev["rt60"] * SAMPLE_RATE))
    room = np.fft.rfft(ir, CLIP_SAMPLES) * (
        math.sqrt(max(rev["wet"], 0.0)) / math.sqrt(np.sum(ir**2))
    )
    room += math.sqrt(max(1.0 - rev["wet"], 0.0))
    room.setflags(write=False)
    return recipe, float(loudness), room


def synth_clean(config: SynthConfig, clip: Clip) -> np.ndarray:
    """Synthesise the clean scene spectrum (rfft) of one clip."""
    recipe, loudness, room = _location(config, clip.scene_idx, clip.city_idx, clip.loc)
    key = [clip.scene_idx, clip.city_idx, clip.loc, clip.segment]
    seg_u = np.random.default_rng([config.seed, 2, *key]).random((len(_COMPONENTS), 2))
    rng = np.random.default_rng([config.seed, 3, *key, clip.index])
    mix = Mix(rng, config.seed)
    jitter = config.clip_jitter

    for ci, comp in enumerate(_COMPONENTS):
        p = recipe.get(comp)
        if p is None or comp == "reverb":
            continue
        db = p["level"] + jitter * (3.0 * (seg_u[ci, 0] - 0.5) + 1.5 * rng.standard_normal())
        if comp == "bed":
            shape = spectral_shape(
                "bed",
                quantise(p["tilt"]),
                quantise(p["hp"], 1),
                quantise(p["lp"], 10),
                quantise(p["hump"], 0.1),
            )
            mix.spec += white_spectrum(rng, config.seed) * (shape * 10.0 ** (db / 20.0))
            continue
        level = 10.0 ** ((db + config.event_level_db) / 20.0)
        if "clip_p" in p and rng.random() >= p["clip_p"]:
            continue
        INGREDIENTS[comp](mix, p, level, float(seg_u[ci, 1]))

    spec = mix.finish() * room
    gain_db = loudness + config.gain_jitter_db / 3.0 * (2 * rng.random() - 1)
    return spec * (10 ** (gain_db / 20) / (rms_spec(spec, CLIP_SAMPLES) + 1e-12))
