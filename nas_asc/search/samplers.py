"""Samplers: which candidate a trial tries next, seeded per trial.

A sampler is chosen by name (``--sampler tpe``, ``--sampler random``, with options as
``tpe:n_startup_trials=8``) from :data:`SAMPLERS` and held as a :class:`SamplerFactory`
instance: a small object that builds a fresh Optuna sampler for one seed. The search wraps it
in :class:`TrialSeededSampler`, which gives every trial its own sampler seeded from the study
seed and the trial's own number, so that workers starting trials together get different seeds
and a study that was interrupted and continued samples what an uninterrupted one would have,
given the same finished trials.

Adding a sampler is one subclass of :class:`SamplerFactory` registered under a name::

    @SAMPLERS.register("nsga2")
    @dataclass(frozen=True)
    class NSGA2(SamplerFactory):
        population_size: int = 20

        def __call__(self, seed):
            return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from dataclasses import dataclass

import optuna

from nas_asc._registry import Registry, build_config, parse_spec

__all__ = [
    "SAMPLERS",
    "GPFactory",
    "NSGA2Factory",
    "RandomFactory",
    "SamplerFactory",
    "TPEFactory",
    "TrialSeededSampler",
    "create_sampler",
    "trial_seed",
]

SAMPLERS: Registry[type[SamplerFactory]] = Registry("sampler")


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Seed of one trial, derived from the study seed and the trial number (stable on resume)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SamplerFactory(abc.ABC):
    """Builds the Optuna sampler of one trial from its seed."""

    name: str = ""

    @abc.abstractmethod
    def __call__(self, seed: int) -> optuna.samplers.BaseSampler:
        """A fresh sampler seeded with ``seed``."""

    def describe(self) -> dict:
        """Name and settings, recorded in the study."""
        fields = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"name": self.name, **fields}


def _check_int(factory: SamplerFactory, key: str, low: int) -> None:
    """Refuse a setting that is not an integer >= ``low`` (a string, a bool, a float such as
    inf, nan or 1e400 from ``tpe:n_startup_trials=...``), naming the sampler and the key."""
    value = getattr(factory, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"sampler {factory.name}: {key} must be an integer >= {low}, got {value!r}; "
            f"e.g. {factory.name}:{key}={max(low, 8)}"
        )


@dataclass(frozen=True)
class _ModelBasedFactory(SamplerFactory):
    """A sampler that models the study after ``n_startup_trials`` random ones."""

    n_startup_trials: int = 4  # random trials before the sampler models the study

    def __post_init__(self) -> None:
        _check_int(self, "n_startup_trials", 0)


@SAMPLERS.register("tpe")
@dataclass(frozen=True)
class TPEFactory(_ModelBasedFactory):
    """Multivariate TPE that learns the feasible region from the budget constraints.

    It keeps Optuna's ``constant_liar`` default (on): a trial running elsewhere counts as if it
    had scored the worst value seen, so concurrent workers spread out instead of sampling next
    to each other.
    """

    multivariate: bool = True  # model the dimensions jointly (they interact: width x Mel bins)

    name = "tpe"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.multivariate, bool):
            raise ValueError(
                f"sampler tpe: multivariate must be true or false, got {self.multivariate!r}; "
                "e.g. tpe:multivariate=false"
            )

    def __call__(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=self.n_startup_trials, multivariate=self.multivariate
        )


@SAMPLERS.register("random")
@dataclass(frozen=True)
class RandomFactory(SamplerFactory):
    """Uniform random sampling: the floor every other sampler must beat."""

    name = "random"

    def __call__(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("gp")
@dataclass(frozen=True)
class GPFactory(_ModelBasedFactory):
    """Gaussian-process Bayesian optimization (Optuna's ``GPSampler``): one GP per objective
    and one per budget constraint; multi-objective candidates by log expected hypervolume
    improvement, weighted by the probability of fitting the budget."""

    name = "gp"

    def __call__(self, seed: int) -> optuna.samplers.BaseSampler:
        import warnings

        with warnings.catch_warnings():  # experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(
                seed=seed, n_startup_trials=self.n_startup_trials, warn_independent_sampling=False
            )


@SAMPLERS.register("nsga2")
@dataclass(frozen=True)
class NSGA2Factory(SamplerFactory):
    """NSGA-II with constrained domination (feasible first); generations of
    ``population_size`` trials, the first one random."""

    population_size: int = 8  # a short search needs small generations to evolve at all

    name = "nsga2"

    def __post_init__(self) -> None:
        _check_int(self, "population_size", 2)

    def __call__(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(population_size=self.population_size, seed=seed)


def create_sampler(spec: str | SamplerFactory) -> SamplerFactory:
    """The sampler factory named by ``spec`` (``NAME`` or ``NAME:K=V,...``); an instance as is.

    Example:
        >>> create_sampler("tpe:n_startup_trials=8")
        TPEFactory(n_startup_trials=8, multivariate=True)
    """
    if isinstance(spec, SamplerFactory):
        return spec
    name, options = parse_spec(spec, "sampler")
    return build_config(SAMPLERS.get(name), options, f"sampler {name!r}")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A fresh ``factory(seed)`` sampler for every trial, seeded by the study seed and the
    trial's own number.

    The seed is taken once the trial exists (Optuna calls :meth:`before_trial` with it), so
    workers that start trials at the same moment get different numbers and different seeds.
    Each open trial keeps its own sampler until it ends.

    Args:
        factory: builds the sampler of one trial (a :class:`SamplerFactory`).
        study_seed: the study seed.
    """

    def __init__(self, factory: SamplerFactory, study_seed: int) -> None:
        self.factory = create_sampler(factory)
        self.study_seed = study_seed
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._samplers:
            seed = trial_seed(self.study_seed, trial.number)
            self._samplers[trial.number] = self.factory(seed)
        return self._samplers[trial.number]

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)

    def forget(self, number: int) -> None:
        """Drop trial ``number``'s sampler (its outcome was told elsewhere, e.g. by a Ray
        trainable, so :meth:`after_trial` is not called here)."""
        self._samplers.pop(number, None)

    def reseed_rng(self) -> None:
        # a copy: with n_jobs > 1, other threads open and close trials meanwhile
        for sampler in list(self._samplers.values()):
            sampler.reseed_rng()
