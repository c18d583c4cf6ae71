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
    # a sampler that models dimensions jointly (multivariate TPE, without its random startup
    # trials: the suite samples after one finished trial); random samples each dimension
    # independently and NSGA-II by generations, so neither has a relative search space; the GP's
    # is the same as TPE's (Optuna's intersection search space) and costs 1.5 s a case
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
    assert create_sampler("gp").describe() == {"name": "gp", "n_startup_trials": 4}
    assert create_sampler("nsga2:population_size=6").describe() == {
        "name": "nsga2",
        "population_size": 6,
    }
    with pytest.raises(
        ValueError, match="unknown sampler 'cma'; known samplers: gp, nsga2, random, tpe"
    ):
        create_sampler("cma")
    with pytest.raises(ValueError, match="population_size must be an integer >= 2, got 1"):
        create_sampler("nsga2:population_size=1")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['startup'\]"):
        create_sampler("tpe:startup=3")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "tpe:n_startup_trials=abc",
            "sampler tpe: n_startup_trials must be an integer >= 0, got 'abc'",
        ),
        (
            "tpe:n_startup_trials=1e400",
            "sampler tpe: n_startup_trials must be an integer >= 0, got inf",
        ),
        (
            "gp:n_startup_trials=.nan",
            "sampler gp: n_startup_trials must be an integer >= 0, got nan",
        ),
        (
            "gp:n_startup_trials=2.5",
            "sampler gp: n_startup_trials must be an integer >= 0, got 2.5",
        ),
        (
            "nsga2:population_size=.inf",
            "sampler nsga2: population_size must be an integer >= 2, got inf",
        ),
        (
            "nsga2:population_size=true",
            "sampler nsga2: population_size must be an integer >= 2, got True",
        ),
        ("tpe:multivariate=3", "sampler tpe: multivariate must be true or false, got 3"),
        ("tpe:n_startup_trials=4,n_startup_trials=8", "n_startup_trials is given twice"),
    ],
)
def test_a_sampler_setting_of_the_wrong_type_is_refused_by_name(spec, message):
    """A string, a bool or a non-finite number where an integer belongs is refused in one
    line naming the sampler and the key, not met later as a comparison error or an endless
    random phase."""
    with pytest.raises(ValueError) as info:
        create_sampler(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# 12 trials per sampler, GP's acquisition optimized each time (8 s)
@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_a_resumed_study_proposes_what_an_uninterrupted_one_does(name, tmp_path):
    """Stopping after 3 trials, reopening the storage and running 3 more gives the 6 proposals
    one uninterrupted run makes (the sampler is rebuilt per trial from the seed and the
    study's history), for every sampler, constraints and two objectives included."""
    spec = {"gp": "gp:n_startup_trials=2", "nsga2": "nsga2:population_size=2"}.get(name, name)

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        k = trial.suggest_int("k", 1, 8)
        trial.set_constraint("budget", x * k - 4)
        return x * k, (x - 0.5) ** 2 + k

    def run(url, splits):
        for n in splits:
            study = optuna.create_study(
                study_name="s",
                storage=url,
                directions=["maximize", "minimize"],
                sampler=TrialSeededSampler(spec, study_seed=7),
                load_if_exists=True,
            )
            study.optimize(objective, n_trials=n)
        return [t.params for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    whole = run(f"sqlite:///{tmp_path}/whole.db", [6])
    resumed = run(f"sqlite:///{tmp_path}/resumed.db", [3, 3])
    assert len(whole) == 6
    assert resumed == whole
