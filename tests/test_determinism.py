"""Determinism (issue 7): the same seed and configuration give identical results on the CPU.

Two searches with the same seed, space and data must sample the same candidates and measure the
same fp32 and int8 accuracies and the same training curves, and two trainings of the same model
with the same seed must end in bit-identical weights. Everything random in nas-asc draws from a
generator seeded by the study seed and the trial number (sampler, initialization, batch order,
augmentation, calibration subset), and the CPU kernels used are deterministic for a fixed number
of threads; wall-clock figures are the only values allowed to differ.
"""

from __future__ import annotations

import math

import pytest
import torch

from nas_asc.data.features import FrontEnd
from nas_asc.search.backends import run_trials
from nas_asc.search.settings import SearchSettings
from nas_asc.train.loop import TrainConfig, train

# A small CNN on an 8 kHz front end: int8 calibration dominates a trial's time and grows with
# the number of layers, so this space keeps two full searches within seconds.
SPACE = {
    "name": "tiny-determinism",
    "model": "cnn",
    "fixed": {
        "model": {"variant": "sm1"},
        "frontend": {"sample_rate": 8000, "hop_length": 512, "n_mels": 32},
        "train": {"batch_size": 32, "lr": 0.02},
    },
    "dimensions": {
        "model.width": {"type": "categorical", "choices": [0.5, 1.0]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.epochs": {"type": "int", "low": 1, "high": 2},
        "train.kd_lambda": {"type": "float", "low": 0.0, "high": 0.5},
        "train.mixstyle_p": {"type": "float", "low": 0.0, "high": 1.0},
    },
}
# wall-clock measurements, where the trial ran and the artifact ids (random UUIDs): the only
# attributes allowed to differ
_CLOCK = ("seconds", "time", "worker", "datetime", "artifact")


def _strip_clock(value):
    if isinstance(value, dict):
        return {k: _strip_clock(v) for k, v in value.items() if not any(c in k for c in _CLOCK)}
    if isinstance(value, list):
        return [_strip_clock(v) for v in value]
    return value


def _search(dataset, tmp_path, name: str):
    from nas_asc.budget import DEFAULT_BUDGET
    from nas_asc.search.objective import SearchContext
    from nas_asc.search.space import SearchSpace

    teacher = torch.randn(dataset.n_meta_rows, 10, generator=torch.Generator().manual_seed(7))
    # no artifact store: checkpoints and confusion images add seconds and no randomness
    context = SearchContext(
        SearchSpace.from_dict(SPACE), DEFAULT_BUDGET, dataset, teacher, seed=3, progress=False
    )
    settings = SearchSettings(
        "det", f"sqlite:///{tmp_path / f'{name}.db'}", n_trials=2, seed=3, pruner="none"
    )
    return run_trials(context, settings, data_label="tiny")


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_two_searches_with_the_same_seed_measure_the_same(tiny_search, tmp_path):
    first = _search(tiny_search, tmp_path, "first").get_trials(deepcopy=False)
    second = _search(tiny_search, tmp_path, "second").get_trials(deepcopy=False)
    assert len(first) == len(second) == 2
    for a, b in zip(first, second, strict=True):
        assert a.state == b.state and a.user_attrs["status"] == "trained", a.user_attrs
        assert a.params == b.params
        assert a.values == b.values  # int8 accuracy, MACs, parameter bytes
        for key in ("int8_accuracy", "fp32_accuracy", "accuracy_by_device", "confusion"):
            assert a.user_attrs[key] == b.user_attrs[key], key
        assert a.user_attrs["seed"] == b.user_attrs["seed"]
        assert _strip_clock(a.user_attrs["history"]) == _strip_clock(b.user_attrs["history"])
        assert all(math.isfinite(h["loss"]) for h in a.user_attrs["history"])
        assert _strip_clock(a.user_attrs) == _strip_clock(b.user_attrs)
    # and the two trials differ from each other: the seeds did reach the sampler
    assert first[0].params != first[1].params


def test_training_twice_gives_bit_identical_weights(tiny_search):
    from nas_asc.data.features import load_features
    from nas_asc.models import create_model

    train_set, _ = load_features(tiny_search, FrontEnd(n_mels=32), progress=False)
    teacher = torch.randn(tiny_search.n_meta_rows, 10, generator=torch.Generator().manual_seed(1))
    recipe = TrainConfig(epochs=2, batch_size=32, lr=0.02, mixstyle_p=0.8, kd_lambda=0.5)
    states, histories = [], []
    for _ in range(2):
        torch.manual_seed(11)  # the initialization, as the objective seeds it
        model = create_model("tfsepnet", width=8, dropout=0.1)
        result = train(model, train_set, recipe, teacher, seed=5)
        states.append(model.state_dict())
        histories.append(_strip_clock(result.history))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    assert histories[0] == histories[1]


def test_a_thread_count_lowered_by_load_is_recorded_and_counted(monkeypatch):
    """``--threads auto`` on a busy machine: the trial records its share and the lower count
    it ran on, and the study counts it among the trials whose figures depend on the load."""
    import optuna

    from nas_asc.search.study import load_lowered_threads
    from nas_asc.train import accel

    class OneCoreBusy:  # the others kept one of the two cores busy since the last reading
        cpus = {"cpu0", "cpu1"}

        def seconds(self):
            return 1.0

        def others_busy(self):
            return 1.0

    monkeypatch.setattr(accel, "_since_finish", OneCoreBusy())
    monkeypatch.setattr(accel, "cpu_cores", lambda: 2)
    monkeypatch.setattr(accel, "_share", 2)
    before = torch.get_num_threads()
    try:
        adapting = accel.AccelOptions(threads=None, adapt_threads=True)
        session = accel.prepare_for_training(
            torch.nn.Linear(2, 2), torch.zeros(1, 2), options=adapting
        )
        session.epoch_end()
        busy = session.summary()
    finally:
        torch.set_num_threads(before)
    assert busy["share"] == 2 and busy["threads"] == [1]

    idle = dict(busy, threads=[2, 2])
    one = accel.AccelOptions(threads=1)  # --threads 1: fewer than the share by choice, not by load
    fixed = accel.prepare_for_training(torch.nn.Linear(2, 2), torch.zeros(1, 2), options=one)
    fixed = fixed.summary()
    torch.set_num_threads(before)
    assert fixed["share"] == 2 and fixed["threads"] == [1]
    study = optuna.create_study(directions=["maximize"])
    for accel_attrs in (busy, idle, fixed, None):
        attrs = {"status": "trained"} | ({"train_accel": accel_attrs} if accel_attrs else {})
        study.add_trial(optuna.trial.create_trial(values=[0.5], user_attrs=attrs))
    assert load_lowered_threads(study) == 1
