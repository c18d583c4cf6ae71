"""The per-trial seeded sampler passes Optuna's own sampler suites, for every registered sampler.

:class:`~nas_asc.search.samplers.TrialSeededSampler` stands between Optuna and the sampler a
search names: the suites of ``optuna.testing.pytest_samplers`` check that it samples every
distribution within bounds, handles relative search spaces and multi-objective studies, and
works with parallel ``n_jobs``, exactly as a sampler Optuna ships must.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
)

from nas_asc.search.samplers import SAMPLERS, TrialSeededSampler, create_sampler, trial_seed


class _EverySampler:
    @pytest.fixture(params=SAMPLERS.names())
    def sampler(self, request):
        return lambda: TrialSeededSampler(request.param, study_seed=3)


class TestBasic(_EverySampler, BasicSamplerTestCase):
    pass


class TestRelative(RelativeSamplerTestCase):
    # the samplers that model dimensions jointly (multivariate TPE, without its random startup
    # trials: the suite samples after one finished trial); random samples each dimension
    # independently and has no relative search space
    @pytest.fixture(params=["tpe:n_startup_trials=0"])
    def sampler(self, request):
        return lambda: TrialSeededSampler(request.param, study_seed=3)


class TestMultiObjective(_EverySampler, MultiObjectiveSamplerTestCase):
    pass


def test_each_trial_samples_with_its_own_seed_whatever_ran_before():
    """Trial k's first proposal is what a sampler seeded trial_seed(study seed, k) proposes."""

    def first_values(study_seed: int, n: int) -> list[float]:
        study = optuna.create_study(sampler=TrialSeededSampler("random", study_seed))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
        return [t.params["x"] for t in study.trials]

    values = first_values(5, 4)
    for number, value in enumerate(values):
        alone = optuna.create_study(
            sampler=optuna.samplers.RandomSampler(seed=trial_seed(5, number))
        )
        alone.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        assert alone.trials[0].params["x"] == value
    assert first_values(5, 4) == values
    assert first_values(6, 4) != values


def test_a_sampler_spec_is_parsed_once_into_an_instance():
    tpe = create_sampler("tpe:n_startup_trials=8")
    assert tpe.describe() == {"name": "tpe", "n_startup_trials": 8, "multivariate": True}
    assert create_sampler(tpe) is tpe
    assert create_sampler("random").describe() == {"name": "random"}
    with pytest.raises(ValueError, match="unknown sampler 'gp'; known samplers: random, tpe"):
        create_sampler("gp")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['startup'\]"):
        create_sampler("tpe:startup=3")
