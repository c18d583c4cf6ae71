"""The sound sources of the synthetic scenes: spectral shapes, the noise bank, the clip mix
(:class:`Mix`) and the ingredients (:data:`INGREDIENTS`) that render into it.

Band-limited ingredients are rendered on coarse sample grids and added to the clip's spectrum
(rfft of the 1-second clip); tones accumulate in time-domain buffers folded in at the end.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from nas_asc.data.tau22 import SAMPLE_RATE

CLIP_SAMPLES = SAMPLE_RATE  # samples per 1-second clip
_F = np.fft.rfftfreq(CLIP_SAMPLES, 1.0 / SAMPLE_RATE)
#: Octaves of each rfft bin of a clip above or below 1 kHz (bins under 10 Hz count as 10 Hz).
LOG2F = np.log2(np.maximum(_F, 10.0) / 1000.0)


# --------------------------------------------------------------------------------------------
# Spectral helpers
# --------------------------------------------------------------------------------------------

#: Decimation factors of the coarse grids that band-limited ingredients are rendered on; a grid
#: with factor ``d`` has ``CLIP_SAMPLES // d`` samples at ``SAMPLE_RATE / d`` Hz and shares the
#: 1-Hz bin spacing of the full grid, so its spectrum drops into the low bins of the clip's
#: spectrum.
_GRIDS = {d: np.arange(CLIP_SAMPLES // d) * d / SAMPLE_RATE for d in (1, 2, 4, 20)}
_BANK_SIZE = 1 << 20


def highpass(fc: float, order: int = 2) -> np.ndarray:
    """Magnitude of a Butterworth-like high-pass at ``fc`` Hz."""
    ratio = fc / np.maximum(_F, 1e-3)
    return 1.0 / np.sqrt(1.0 + np.minimum(ratio, 1e6) ** (2 * order))


def lowpass(fc: float, order: int = 2) -> np.ndarray:
    """Magnitude of a Butterworth-like low-pass at ``fc`` Hz."""
    return 1.0 / np.sqrt(1.0 + (_F / fc) ** (2 * order))


def _tilt(db_per_octave: float) -> np.ndarray:
    """Spectral tilt around 1 kHz."""
    return 10.0 ** (db_per_octave * LOG2F / 20.0)


def bump(fc: float, bw_octaves: float) -> np.ndarray:
    """Gaussian bump on a log-frequency axis (peak 1 at ``fc``)."""
    return np.exp(-0.5 * ((LOG2F - math.log2(fc / 1000.0)) / bw_octaves) ** 2)


def quantise(x: float, step: float = 0.01) -> float:
    """Quantise a shape parameter (keeps the shape cache effective, rounding is negligible)."""
    return round(x / step) * step


@lru_cache(maxsize=256)
def spectral_shape(
    kind: str, a: float, b: float = 0.0, c: float = 0.0, d: float = 0.0
) -> np.ndarray:
    """Cached magnitude responses of the ingredients (keyed by their quantised parameters)."""
    if kind == "bed":  # tilt, hp, lp, hump; unit mean power gain
        shape = _tilt(a) * highpass(b) * lowpass(c, 3) * 10.0 ** (d * bump(3000, 0.6) / 20.0)
        shape /= math.sqrt(float(np.mean(shape**2)))
    elif kind == "rumble":  # freq, bw
        shape = bump(a, b) * highpass(20) * lowpass(600, 3)
    elif kind == "engine":  # lp, res
        shape = lowpass(a, 2) * highpass(20) * (1.0 + 2.0 * bump(b, 0.4))
    elif kind == "babble":  # center
        shape = (bump(a, 0.9) + 0.6 * bump(a * 2.8, 0.6)) * highpass(150) * lowpass(4000, 2)
    elif kind == "voice":  # center (first formant)
        formants = bump(a, 0.35) + 0.7 * bump(a * 2.2, 0.3) + 0.4 * bump(a * 3.5, 0.25)
        shape = formants * _tilt(-9.0) * highpass(80, 2) * lowpass(4500, 4)
    elif kind == "clicks":  # bright, octaves
        shape = bump(a, b) * highpass(80)
    elif kind == "lowpass":  # lp, order
        shape = lowpass(a, round(b)) * highpass(15)
    elif kind == "traffic":  # lp
        shape = _tilt(-3.0) * lowpass(a, 2) * highpass(60) * (1.0 + 1.5 * bump(1000, 0.8))
    else:  # pragma: no cover - programming error
        raise KeyError(kind)
    shape.setflags(write=False)
    return shape


@lru_cache(maxsize=2)
def _bank(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A long block of white Gaussian noise (and a complex view of another) for slicing."""
    rng = np.random.default_rng([seed, 99])
    real = rng.standard_normal(_BANK_SIZE)
    pairs = rng.standard_normal((2, _BANK_SIZE // 2)) * math.sqrt(CLIP_SAMPLES / 2.0)
    real.setflags(write=False)
    cplx = pairs[0] + 1j * pairs[1]
    cplx.setflags(write=False)
    return real, cplx


def _white(rng: np.random.Generator, seed: int, n: int) -> np.ndarray:
    """``n`` samples of unit-variance white noise: a random slice of the seed's noise bank."""
    real = _bank(seed)[0]
    start = int(rng.integers(0, real.size - n))
    return real[start : start + n]


def white_spectrum(rng: np.random.Generator, seed: int) -> np.ndarray:
    """rfft-domain white noise of a full clip (unit variance in time): a bank slice."""
    cplx = _bank(seed)[1]
    start = int(rng.integers(0, cplx.size - _F.size))
    return cplx[start : start + _F.size]


def rms_spec(spec: np.ndarray, n: int) -> float:
    """RMS of the real ``n``-sample signal with rfft ``spec`` (Parseval)."""
    flat = np.ascontiguousarray(spec).view(np.float64)
    return math.sqrt(2.0 * float(np.sum(np.square(flat)))) / n


def _control(rng: np.random.Generator, rate: float, d: int, start: float = -0.5) -> np.ndarray:
    """Random control curve at ``rate`` Hz on grid ``d`` (linear interpolation, ~N(0, 1))."""
    n = math.ceil((1.0 - start) * rate) + 2
    return np.interp(_GRIDS[d], start + np.arange(n) / rate, rng.standard_normal(n))


class Mix:
    """Accumulates one clip's spectrum from ingredients rendered on coarse grids."""

    def __init__(self, rng: np.random.Generator, seed: int) -> None:
        """Start an empty mix."""
        self.rng = rng
        self.seed = seed
        self.spec = np.zeros(_F.size, dtype=np.complex128)
        self.tones = {2: np.zeros(CLIP_SAMPLES // 2), 4: np.zeros(CLIP_SAMPLES // 4)}

    def white(self, d: int) -> np.ndarray:
        """White noise on grid ``d``."""
        return _white(self.rng, self.seed, CLIP_SAMPLES // d)

    def add(
        self, x: np.ndarray, shape: np.ndarray | None, level: float, ref: float | None = None
    ) -> None:
        """Filter grid signal ``x`` by ``shape`` to RMS ``level * ref`` and add it.

        ``ref`` defaults to the RMS of ``x`` (white-noise excitations keep their loudness);
        without a ``shape`` the signal is added as is, scaled by ``level``.
        """
        n = x.size
        d = CLIP_SAMPLES // n
        spec = np.fft.rfft(x)
        if n % 2 == 0:
            spec[-1] = 0.0
        if shape is not None:
            spec *= shape[: spec.size]
            rms = rms_spec(spec, n)
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
        n = CLIP_SAMPLES // d
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
# Ingredients: each renders into a Mix given its parameters, level and a per-segment uniform.
# --------------------------------------------------------------------------------------------


def _rumble(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Low-frequency band noise with slow amplitude modulation (vehicles, ventilation)."""
    t = _GRIDS[20]
    env = 1.0 + p["am_depth"] * np.sin(2 * np.pi * p["am_rate"] * t + 6.3 * seg)
    env *= np.exp(0.15 * _control(mix.rng, 2.0, 20))
    mix.add(
        mix.white(20) * env,
        spectral_shape("rumble", quantise(p["freq"], 1), quantise(p["bw"])),
        level,
    )


def _engine(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Combustion engine: jittered pulse train at a drifting f0 through a resonant low-pass."""
    rng, t = mix.rng, _GRIDS[4]
    f0 = p["f0"] * (0.9 + 0.2 * seg)
    slope = float(rng.choice((-1.0, 1.0)))
    f0t = f0 * (1 + p["drift"] * (slope * (t - 0.5) + 0.3 * _control(rng, 1.5, 4)))
    phase = np.cumsum(f0t) * (4 / SAMPLE_RATE) + rng.random()
    idx = np.flatnonzero(np.diff(np.floor(phase))) + 1
    train = np.zeros(t.size)
    train[idx] = 1.0 + 0.3 * rng.standard_normal(idx.size)
    mix.add(
        train,
        spectral_shape("engine", quantise(p["lp"], 10), quantise(p["res"], 1)),
        level,
        ref=1.0,
    )


def _whine(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Electric-motor whine: three partials gliding up or down in pitch."""
    glide = p["glide"] * float(mix.rng.choice((-1.0, 1.0)))
    base = p["freq"] * (0.95 + 0.1 * seg)
    top = base * 2.0 ** abs(glide)
    mix.tone(0.0, 1.0, lambda t: base * 2.0 ** (glide * (t - 0.5)), level, (1.0, 0.5, 0.3), top=top)


def _clacks(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Rail joints: pairs of low thumps (two axles) at a steady rate."""
    rng = mix.rng
    period = 1.0 / p["rate"]
    starts = rng.uniform(-period, 0) + np.arange(int(1.0 / period) + 2) * period
    times = np.concatenate([starts, starts + p["gap"]])
    amps = 10 ** (rng.uniform(-6, 0, times.size) / 20)
    mix.clicks(
        times, amps, p["decay"], 4, spectral_shape("lowpass", quantise(p["lp"], 10), 2), level
    )


def _babble(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Speech babble: formant-shaped noise modulated at syllable rate by several talkers."""
    rng = mix.rng
    talkers = max(1, round(p["talkers"]))
    n_ctrl = math.ceil(1.5 * p["rate"]) + 2
    ctrl = np.maximum(rng.standard_normal((talkers, n_ctrl)) + 0.3, 0.0) ** 1.5
    env = np.interp(_GRIDS[4], -0.25 + np.arange(n_ctrl) / p["rate"], ctrl.mean(axis=0))
    env /= math.sqrt(float(np.mean(env**2))) + 1e-9
    mix.add(mix.white(4) * env, spectral_shape("babble", quantise(p["center"], 1)), level)


def _voices(mix: Mix, p: dict, level: float, seg: float) -> None:
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
    mix.add(
        x,
        spectral_shape("voice", quantise(p["center"], 1)),
        level,
        ref=math.sqrt(float(np.mean(power))),
    )


def _steps(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Footsteps: short bright clicks from one or more walkers at a walking rate."""
    rng = mix.rng
    times = []
    for _ in range(max(1, round(p["walkers"]))):
        rate = p["rate"] * rng.uniform(0.85, 1.15)
        n = int(rate) + 3
        times.append(rng.uniform(-1 / rate, 0) + np.arange(n) / rate + rng.normal(0, 0.02, n))
    times = np.concatenate(times)
    amps = 10 ** (rng.uniform(-8, 0, times.size) / 20)
    mix.clicks(
        times, amps, p["decay"], 2, spectral_shape("clicks", quantise(p["bright"], 1), 1.2), level
    )


def _luggage(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Rolling luggage or trolleys: a fast train of tiny clicks for part of the clip."""
    rng = mix.rng
    start, dur = rng.uniform(-0.3, 0.7), rng.uniform(0.3, 1.0)
    n = int(dur * p["rate"]) + 1
    times = start + np.arange(n) / p["rate"] + rng.normal(0, 0.004, n)
    amps = 10 ** (rng.uniform(-8, 0, n) / 20)
    mix.clicks(
        times, amps, 0.006, 2, spectral_shape("clicks", quantise(p["bright"], 1), 1.0), level
    )


_CHIME_PATTERNS = ((1.0, 0.8), (1.0, 1.25, 1.5), (1.5, 1.25, 1.0), (1.0, 1.5, 1.0))


def _chime(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Announcement chime: two or three decaying bell notes (pattern fixed per location)."""
    notes = _CHIME_PATTERNS[min(3, int(p["pattern"]))]
    start = mix.rng.uniform(-0.6, 0.8)
    for k, ratio in enumerate(notes):
        mix.tone(start + 0.35 * k, 0.9, p["pitch"] * ratio, level, (1.0, 0.35, 0.15), decay=0.35)


def _bell(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Tram bell: one to three bright metallic dings (inharmonic partials)."""
    rng = mix.rng
    start = rng.uniform(-0.2, 0.8)
    for _ in range(max(1, round(p["count"] * rng.uniform(0.7, 1.3)))):
        mix.tone(
            start, 0.6, p["pitch"], level, (1.0, 0.5, 0.25), ratios=(1.0, 2.76, 5.4), decay=0.25
        )
        start += rng.uniform(0.15, 0.25)


def _beeps(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Door or stop-request beeps: a short series of square-ish tone pips."""
    rng = mix.rng
    count = max(1, round(p["count"] * rng.uniform(0.7, 1.3)))
    gap, start = rng.uniform(0.18, 0.3), rng.uniform(-0.5, 0.7)
    for k in range(count):
        mix.tone(start + k * gap, 0.1, p["freq"], level, (1.0, 0.33, 0.2), ratios=(1.0, 3.0, 5.0))


def _squeal(mix: Mix, p: dict, level: float, seg: float) -> None:
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


def _passby(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Passing cars: broadband tyre/engine noise swelling and fading (near and far)."""
    rng, t = mix.rng, _GRIDS[2]
    n = rng.poisson(p["rate"] * 3.0)
    env = np.full(t.size, 0.05)
    for _ in range(n):
        c0, w0 = rng.uniform(-1.0, 2.0), p["width"] * rng.uniform(0.7, 1.3)
        env += 10 ** (rng.uniform(-12, 0) / 20) / (1.0 + ((t - c0) / w0) ** 2)
    mix.add(mix.white(2) * env, spectral_shape("traffic", quantise(p["lp"], 10)), level)


def _birds(mix: Mix, p: dict, level: float, seg: float) -> None:
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


def _wind(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Wind: gusty low-passed noise."""
    env = np.exp(p["gust"] * _control(mix.rng, 1.0, 20))
    env /= math.sqrt(float(np.mean(env**2)))
    mix.add(mix.white(20) * env, spectral_shape("lowpass", quantise(p["lp"], 1), 2), level)


_SCALE = (1.0, 9 / 8, 5 / 4, 4 / 3, 3 / 2, 5 / 3, 15 / 8, 2.0)


def _music(mix: Mix, p: dict, level: float, seg: float) -> None:
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


def _horn(mix: Mix, p: dict, level: float, seg: float) -> None:
    """Car horn: two buzzy tones a major third apart."""
    rng = mix.rng
    start, dur = rng.uniform(-0.2, 0.8), rng.uniform(0.15, 0.6)
    amps = tuple(1.0 / (k + 1) for k in range(6))
    mix.tone(start, dur, p["freq"], level, amps)
    mix.tone(start, dur, p["freq"] * 1.26, 0.8 * level, amps)


INGREDIENTS = {
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
