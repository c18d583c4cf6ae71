"""Multi-objective early stopping: the dominance rule, and a dominated trial stopped in a study."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.search.backends import run_trials
from nas_asc.search.objective import DIRECTIONS, SearchContext
from nas_asc.search.pruning import DominancePruner, NopPruner, create_pruner
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import trial_counts


def _study_with(peers):
    """A study holding finished trials ``(macs, param_bytes, epoch accuracies, state)``."""
    study = optuna.create_study(directions=list(DIRECTIONS))
    for macs, nbytes, curve, state in peers:
        study.add_trial(
            optuna.create_trial(
                state=state,
                values=[curve[-1], macs, nbytes] if state == TrialState.COMPLETE else None,
                user_attrs={"macs": macs, "param_bytes": nbytes, "epoch_accuracy": curve},
            )
        )
    return study


def test_a_trial_beaten_by_most_cheaper_peers_is_pruned():
    done = TrialState.COMPLETE
    study = _study_with([(100, 100, [0.5, 0.6], done)] * 3)
    pruner = DominancePruner(min_epochs=1, reduction_factor=3, min_peers=3)
    assert pruner.should_prune(study, 99, 200, 200, [0.4])  # all 3 cheaper peers were better
    assert not pruner.should_prune(study, 99, 200, 200, [0.55])  # better than all of them
    # the same accuracy counts as dominated (equal accuracy at higher cost)
    assert pruner.should_prune(study, 99, 100, 100, [0.5])


def test_dearer_peers_never_count_so_the_cheap_end_of_the_front_survives():
    study = _study_with([(1000, 1000, [0.9], TrialState.COMPLETE)] * 5)
    assert not DominancePruner(min_epochs=1, min_peers=1).should_prune(study, 99, 10, 10, [0.1])
    # cheaper in MACs but dearer in bytes is not comparable either
    study = _study_with([(5, 1000, [0.9], TrialState.COMPLETE)] * 5)
    assert not DominancePruner(min_epochs=1, min_peers=1).should_prune(study, 99, 10, 10, [0.1])


def test_no_decision_before_enough_peers_or_epochs():
    study = _study_with([(1, 1, [0.9, 0.9], TrialState.PRUNED)] * 2)
    assert not DominancePruner(min_epochs=1, min_peers=3).should_prune(study, 99, 10, 10, [0.1])
    assert DominancePruner(min_epochs=1, min_peers=2).should_prune(
        study, 99, 10, 10, [0.1]
    )  # pruned peers count
    assert not DominancePruner(min_peers=2, min_epochs=2).should_prune(study, 99, 10, 10, [0.1])
    # peers that never reached this epoch are not compared at it
    assert not DominancePruner(min_epochs=1, min_peers=1).should_prune(
        study, 99, 10, 10, [0.1, 0.1, 0.1]
    )


def test_successive_halving_keeps_the_top_share_of_peers():
    curves = [[a] for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    study = _study_with([(1, 1, c, TrialState.COMPLETE) for c in curves])
    halving = DominancePruner(min_epochs=1, reduction_factor=2, min_peers=3)
    assert halving.should_prune(study, 99, 10, 10, [0.35])  # 3 of 6 at least as good: 50 %
    assert not halving.should_prune(study, 99, 10, 10, [0.45])  # 2 of 6
    third = DominancePruner(min_epochs=1, reduction_factor=3, min_peers=3)
    assert not third.should_prune(study, 99, 10, 10, [0.35])  # 50 % < 2/3
    assert third.should_prune(study, 99, 10, 10, [0.15])  # 5 of 6
    # exactly at the threshold: 2 of 3 peers at least as good is 1 - 1/3, so it is pruned
    three = _study_with([(1, 1, [a], TrialState.COMPLETE) for a in (0.1, 0.5, 0.6)])
    assert third.should_prune(three, 99, 10, 10, [0.4])


def test_filter_pruned_trials_are_not_peers():
    """Their curve is the unpruned network's, their recorded complexity the pruned one's."""
    study = optuna.create_study(directions=list(DIRECTIONS))
    for _ in range(3):
        study.add_trial(
            optuna.create_trial(
                values=[0.9, 1, 1],
                user_attrs={"macs": 1, "param_bytes": 1, "epoch_accuracy": [0.9], "pruning": {}},
            )
        )
    assert not DominancePruner(min_epochs=1, min_peers=1).should_prune(study, 99, 10, 10, [0.1])


def test_the_running_trial_is_not_its_own_peer():
    study = _study_with([(1, 1, [0.9], TrialState.COMPLETE)])
    assert not DominancePruner(min_epochs=1, min_peers=1).should_prune(study, 0, 10, 10, [0.1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"reduction_factor": 1.0}, "reduction_factor must be > 1"),
        ({"min_peers": 0}, "min_peers must be an integer >= 1"),
        ({"min_epochs": 0}, "min_epochs must be an integer >= 1"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DominancePruner(**kwargs)


def test_create_pruner_names():
    assert isinstance(create_pruner("none"), NopPruner)
    assert isinstance(create_pruner("dominance", min_peers=2), DominancePruner)
    with pytest.raises(ValueError, match="unknown pruner 'asha'; choose one of dominance, none"):
        create_pruner("asha")


SPACE = {
    "name": "prune-me",
    "model": "tfsepnet",
    "fixed": {
        "model": {"width": 8},
        "frontend": {"n_mels": 32},
        "train": {"batch_size": 16, "epochs": 3, "kd_lambda": 0.0, "mixstyle_p": 0.0},
    },
    "dimensions": {"train.lr": {"type": "float", "low": 1.0e-7, "high": 5.0e-2, "log": True}},
}


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_a_dominated_trial_is_stopped_and_recorded_as_pruned(tiny_search, tmp_path):
    """Three good trials, then one that cannot learn (lr 1e-7) at the same complexity."""
    context = SearchContext(
        SearchSpace.from_dict(SPACE),
        DEFAULT_BUDGET,
        tiny_search,
        torch.randn(tiny_search.n_meta_rows, 10),
        progress=False,
    )
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="p", storage=storage, directions=list(DIRECTIONS))
    for lr in (0.02, 0.03, 0.04, 1e-7):
        study.enqueue_trial({"train.lr": lr})
    settings = SearchSettings("p", storage, n_trials=4, pruner="dominance")
    study = run_trials(context, settings, "tiny")
    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3
    for t in trials[:3]:
        assert len(t.user_attrs["epoch_accuracy"]) == 3  # every epoch measured
    last = trials[3]
    # the default min_epochs (2) decides after the second epoch, the last one before training ends
    second = [t.user_attrs["epoch_accuracy"][1] for t in trials[:3]]
    bad = last.user_attrs["epoch_accuracy"][1]
    # premise: after two epochs at least 2 of the 3 equal-cost peers are as good (the default
    # reduction factor 3 stops a trial beaten by 2/3 of its peers)
    assert sum(a >= bad for a in second) >= 2, f"reference trials did not learn: {second} vs {bad}"
    assert last.state == TrialState.PRUNED
    assert last.user_attrs["status"] == "pruned"
    assert last.user_attrs["last_accuracy"] == last.user_attrs["epoch_accuracy"][-1]
    assert last.user_attrs["macs"] == trials[0].user_attrs["macs"]
    assert len(last.user_attrs["epoch_accuracy"]) < 3
    assert study.best_trials and all(t.number != last.number for t in study.best_trials)
    assert trial_counts(study).pruned == 1
