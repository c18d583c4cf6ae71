"""The test fold is sacred: a search decides on validation, measures its front once on test.

Two copies of the tiny dataset differ only in the audio of the test fold (the second's is
noise). The same search through the real CLI on both must decide exactly alike (every trial's
parameters, objectives, per-epoch validation accuracy, pruning), and only the figures measured
after the search on the test fold may differ (a slow test: the second search is all it
needs). ``nas-asc evaluate`` then retrains a front model
with seeds on the whole training split, stores mean ± std, and resumes where it was stopped.
"""

from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import optuna
import pytest
import soundfile

from nas_asc.cli import main
from nas_asc.search.holdout import TEST_ATTRS, rank_agreement, set_finished_trial_attrs
from nas_asc.study.front import kendall_tau

SPACE = """\
name: tiny-protocol
model: cnn
fixed:
  model: {variant: sm1}
  frontend: {sample_rate: 8000, hop_length: 512, n_mels: 32}
  train: {batch_size: 32, lr: 0.02}
dimensions:
  model.width: {type: categorical, choices: [0.5, 1.0]}
  model.dropout: {type: float, low: 0.0, high: 0.3}
  train.epochs: {type: int, low: 1, high: 2}
  train.kd_lambda: {type: float, low: 0.0, high: 0.5}
"""
TRIALS = 4


STORAGE = "sqlite:///studies/tiny-protocol.db"


def _load():
    return optuna.load_study(study_name="tiny-protocol", storage=STORAGE)


def _search(work, data, cache, monkeypatch):
    """``nas-asc search`` in ``work`` on ``data`` with a cache of its own; (study, stdout)."""
    monkeypatch.setenv("NAS_ASC_CACHE", str(cache))  # nothing shared between the two runs
    monkeypatch.chdir(work)
    (work / "space.yaml").write_text(SPACE)
    argv = ["-q", "search", "--space", "space.yaml", "--data", str(data), "--trials", str(TRIALS)]
    argv += ["--threads", "1"]  # a fixed thread count: the same float rounding in both runs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, out.getvalue()
    return _load(), out.getvalue()


@pytest.fixture(scope="module")
def searches(tiny_root, tmp_path_factory):
    """(clean study, its output, its work folder, its data, its cache)."""
    base = tmp_path_factory.mktemp("holdout")
    clean = base / "clean"
    shutil.copytree(tiny_root, clean)
    (base / "w1").mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        a, out_a = _search(base / "w1", clean, base / "c1", monkeypatch)
    return a, out_a, base / "w1", clean, base / "c1"


@pytest.fixture(scope="module")
def poisoned(tiny_root, tmp_path_factory):
    """The same search on a copy of the dataset whose test-fold audio is noise (same names and
    sizes); only the slow test compares it with the clean one (a second search, about 20 s)."""
    base = tmp_path_factory.mktemp("poisoned")
    data = base / "data"
    shutil.copytree(tiny_root, data)
    from nas_asc.data.tau22 import load_tau22

    rng = np.random.default_rng(0)
    for name in load_tau22(data).evaluate.filename:
        path = data / name
        wave, rate = soundfile.read(str(path), dtype="float32")
        soundfile.write(str(path), rng.uniform(-0.5, 0.5, len(wave)), rate, subtype="PCM_24")
    (base / "w").mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        study, _ = _search(base / "w", data, base / "c", monkeypatch)
    return study


def _decisions(study):
    out = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        out.append(
            (
                t.number,
                t.state,
                t.params,
                t.values,
                {k: attrs.get(k) for k in ("status", "int8_accuracy", "fp32_accuracy")},
                attrs.get("accuracy_by_device"),
                attrs.get("epoch_accuracy"),
                attrs.get("confusion"),
            )
        )
    return out


@pytest.mark.slow  # a second search (20 s); CI runs the slow suite
def test_the_test_fold_audio_changes_no_decision_of_the_search(searches, poisoned):
    clean = searches[0]
    assert len(clean.trials) == len(poisoned.trials) == TRIALS
    assert _decisions(clean) == _decisions(poisoned)  # bit-identical, every trial
    assert clean.user_attrs["protocol"] == poisoned.user_attrs["protocol"]
    assert any(t.user_attrs.get("status") == "trained" for t in clean.trials)
    # ... and only the figures measured on the test fold after the search differ
    front_a = [t for t in clean.trials if "test_int8_accuracy" in t.user_attrs]
    front_b = [t for t in poisoned.trials if "test_int8_accuracy" in t.user_attrs]
    assert front_a and [t.number for t in front_a] == [t.number for t in front_b]
    figures_a = [t.user_attrs["test_accuracy_by_device"] for t in front_a]
    figures_b = [t.user_attrs["test_accuracy_by_device"] for t in front_b]
    assert figures_a != figures_b


def test_the_front_is_measured_on_the_test_fold(searches):
    clean = searches[0]
    front = [t for t in clean.trials if "test_int8_accuracy" in t.user_attrs]
    assert front
    for t in front:
        assert set(TEST_ATTRS) <= set(t.user_attrs)
        assert set(t.user_attrs["test_accuracy_by_device"]) >= {"s4", "s5", "s6"}
        assert t.user_attrs["test_unseen_accuracy"] is not None
        assert t.user_attrs["test_clips"] == 180  # the tiny test fold
        assert t.user_attrs["unseen_accuracy"] is None  # validation holds seen devices only


def test_the_output_shows_validation_and_test_side_by_side(searches):
    _, out, *_ = searches
    assert "val int8 %" in out and "test int8 %" in out and "test unseen %" in out
    assert "rank agreement of validation and test int8 accuracy" in out


def test_a_measured_trial_is_what_its_checkpoint_gives_on_the_test_fold(searches):
    clean, _, work, data, cache = searches
    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.data.protocol import protocol_from_record
    from nas_asc.data.tau22 import load_tau22
    from nas_asc.search.artifacts import load_checkpoint
    from nas_asc.train.loop import evaluate

    trial = next(t for t in clean.trials if "test_int8_accuracy" in t.user_attrs)
    protocol = protocol_from_record(load_tau22(data), clean.user_attrs["protocol"])
    ckpt = load_checkpoint(clean, trial)
    train_set, test_set = load_features(
        protocol.test_view(), FrontEnd(**ckpt.frontend), progress=False
    )
    int8 = evaluate(ckpt.build_int8(train_set.x), test_set)
    assert int8.accuracy == trial.user_attrs["test_int8_accuracy"]
    assert int8.accuracy_by_device == trial.user_attrs["test_accuracy_by_device"]


def test_continuing_measures_only_what_is_new_on_the_front(searches, monkeypatch, capsys):
    _, _, work, data, cache = searches
    import nas_asc.search.artifacts as artifacts

    loaded = []
    real = artifacts.load_checkpoint

    def spy(study, trial):
        loaded.append(trial.number)
        return real(study, trial)

    monkeypatch.setattr(artifacts, "load_checkpoint", spy)
    monkeypatch.setenv("NAS_ASC_CACHE", str(cache))
    monkeypatch.chdir(work)
    before = _load()
    measured = {t.number for t in before.trials if "test_int8_accuracy" in t.user_attrs}
    argv = ["-q", "search", "--space", "space.yaml", "--data", str(data)]
    assert main([*argv, "--trials", str(TRIALS + 1)]) == 0
    after = _load()
    front = {t.number for t in after.trials if "test_int8_accuracy" in t.user_attrs}
    assert not set(loaded) & measured  # nothing measured twice
    assert set(loaded) <= front - measured | {TRIALS}
    capsys.readouterr()


def test_another_validation_split_cannot_continue_the_study(searches, monkeypatch, capsys):
    _, _, work, data, cache = searches
    monkeypatch.setenv("NAS_ASC_CACHE", str(cache))
    monkeypatch.chdir(work)
    from nas_asc.data.tau22 import load_tau22

    train = load_tau22(data).train
    lisbon = train[train.identifier.str.startswith("lisbon-")]
    lisbon[["filename", "scene_label"]].to_csv(work / "val.csv", sep="\t", index=False)
    argv = ["-q", "search", "--space", "space.yaml", "--data", str(data)]
    assert main([*argv, "--validation-split", "val.csv"]) == 2
    err = capsys.readouterr().err
    assert "another validation split than this one" in err and "--validation 0.2" in err


def test_evaluate_retrains_with_seeds_and_resumes(searches, monkeypatch, capsys):
    _, _, work, data, cache = searches
    import nas_asc.search.objective as objective

    monkeypatch.setenv("NAS_ASC_CACHE", str(cache))
    monkeypatch.chdir(work)
    study = _load()
    trial = next(t for t in study.trials if "test_int8_accuracy" in t.user_attrs)
    real = objective.train_candidate
    calls = []

    def killed_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C during the second retraining
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "train_candidate", killed_after_one)
    argv = ["-q", "evaluate", "--study", "tiny-protocol", "--trials", str(trial.number)]
    assert main([*argv, "--seeds", "2"]) == 130
    stopped = _load().trials[trial.number]
    assert [r["index"] for r in stopped.user_attrs["evaluation_runs"]] == [0]

    counted = []

    def counting(*args, **kwargs):
        counted.append(len(args[2]))  # the training clips
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "train_candidate", counting)
    capsys.readouterr()
    assert main([*argv, "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert len(counted) == 1  # only the unfinished seed
    done = _load().trials[trial.number]
    runs = done.user_attrs["evaluation_runs"]
    summary = done.user_attrs["evaluation"]
    from nas_asc.data.tau22 import load_tau22

    dataset = load_tau22(data)
    assert counted == [len(dataset.train)]  # the whole training split: validation put back
    assert [r["index"] for r in runs] == [0, 1] and summary["seeds"] == 2
    accs = [r["int8_accuracy"] for r in runs]
    assert summary["int8_accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert summary["int8_accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert runs[0]["seed"] != runs[1]["seed"] != trial.user_attrs["seed"]
    assert all(r["test_clips"] == len(dataset.evaluate) for r in runs)
    assert set(summary["accuracy_by_device"]) >= {"s4", "s5", "s6"}
    assert "retrained int8 %" in out and f"{trial.number}" in out


def test_kendall_tau_b():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 3 concordant, 2 discordant, 1 tie in y: (3 - 2) / sqrt(6 * 5)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 2]) == pytest.approx(1 / np.sqrt(30))
    assert kendall_tau([1], [2]) is None and kendall_tau([1, 1], [1, 2]) is None


def test_finished_trials_take_test_attributes(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    for acc, test in ((0.3, 0.31), (0.4, 0.45), (0.5, 0.40)):
        trial = study.ask()
        trial.set_user_attr("int8_accuracy", acc)
        study.tell(trial, [acc, 1.0])
        set_finished_trial_attrs(study, trial._trial_id, {"test_int8_accuracy": test})
    set_finished_trial_attrs(study, study.trials[0]._trial_id, {"test_int8_accuracy": 0.29})
    fresh = optuna.load_study(study_name=study.study_name, storage=storage)
    assert [t.user_attrs["test_int8_accuracy"] for t in fresh.trials] == [0.29, 0.45, 0.40]
    tau, n = rank_agreement(fresh.trials)
    assert (tau, n) == (pytest.approx(1 / 3), 3)
