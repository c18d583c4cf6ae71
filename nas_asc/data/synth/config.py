"""The synthetic dataset's configuration (:class:`SynthConfig`) and :data:`SYNTH_VERSION`."""

from __future__ import annotations

from dataclasses import dataclass

from nas_asc.errors import DatasetError

#: the ten cities of TAU Urban Acoustic Scenes 2022 Mobile (the real-size layout has them all)
TAU_CITIES = (
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

#: Bumped whenever the generator's output changes for a given config.
SYNTH_VERSION = 1


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
    cities: tuple[str, ...] = TAU_CITIES[:8]  # recording cities (real TAU city names)
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
