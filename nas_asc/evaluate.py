"""The reports' final protocol: chosen configurations retrained with K seeds, measured on test.

A search chooses on the validation split, and each of its models was trained on the training
part only. The DCASE reports give, for the systems they chose, the test accuracy of the
configuration retrained on the whole training split, as mean ± std over seeds. ``nas-asc
evaluate`` does that for Pareto trials (or those asked for): each configuration (model, front
end, recipe; filter pruning included) is trained again by the search's own procedure
(:func:`~nas_asc.search.objective.train_candidate`) on the training split with the validation
split put back, with the teacher retrained on it alike, for seeds ``0 .. K-1`` (each its own
derived seed), quantized to int8 as its recipe says, and measured once on the test fold.

Each finished seed is stored on its trial at once (user attribute ``evaluation_runs``), with
the summary ``evaluation``: ``seeds``, then ``{"mean", "std"}`` (sample standard deviation over
the seeds; 0 for one seed) of ``int8_accuracy``, ``fp32_accuracy``, ``seen_accuracy``,
``unseen_accuracy`` and of every device in ``accuracy_by_device``, plus ``train_clips`` and
``test_clips``. A killed evaluate, run again, redoes only the seeds that did not finish; asking
for more seeds later trains only the new ones. A database that refuses writes stops it before
anything is trained; one that refuses the record of a finished seed (locked or full since) does
not lose it: the seed waits in the artifact folder's ``unrecorded/`` and the next run records it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import torch

from nas_asc.errors import NasAscError
from nas_asc.progress import reporter_for
from nas_asc.study.record import StudyRecord

__all__ = [
    "EVALUATION_VERSION",
    "StudyTeacher",
    "evaluate_study",
    "evaluation_seed",
    "summarize_runs",
    "uses_teacher",
]

EVALUATION_VERSION = 1  # runs of another version (procedure) are not mixed with these


def evaluation_seed(study_seed: int, trial_number: int, index: int) -> int:
    """Seed of retraining ``index`` of a trial (stable, distinct from the trial's own seed)."""
    digest = hashlib.sha256(f"{study_seed}:{trial_number}:evaluate:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _mean_std(values: Sequence[float]) -> dict[str, float] | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std}


def summarize_runs(runs: Sequence[dict]) -> dict[str, Any]:
    """Mean ± std over the seeds of a trial's evaluation runs."""
    devices = sorted({d for run in runs for d in run["accuracy_by_device"]})
    return {
        "seeds": len(runs),
        "int8_accuracy": _mean_std([r["int8_accuracy"] for r in runs]),
        "fp32_accuracy": _mean_std([r["fp32_accuracy"] for r in runs]),
        "seen_accuracy": _mean_std([r["seen_accuracy"] for r in runs]),
        "unseen_accuracy": _mean_std([r["unseen_accuracy"] for r in runs]),
        "accuracy_by_device": {
            d: _mean_std([r["accuracy_by_device"].get(d) for r in runs]) for d in devices
        },
        "train_clips": runs[0]["train_clips"] if runs else 0,
        "test_clips": runs[0]["test_clips"] if runs else 0,
        "version": EVALUATION_VERSION,
    }


class StudyTeacher:
    """The study's teacher, on the whole training split, made only if a recipe distils."""

    def __init__(self, dataset, data_info: dict, progress: bool) -> None:
        self.dataset, self.info, self.progress = dataset, data_info, progress
        self._logits: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        if self._logits is None:
            from nas_asc.train.teacher import get_teacher, load_teacher_logits

            source = self.info.get("teacher_logits")
            if source:
                self._logits = load_teacher_logits(source, self.dataset).logits
            else:
                self._logits = get_teacher(self.dataset, progress=self.progress).logits
        return self._logits


def uses_teacher(recipe) -> bool:
    """Whether any training stage of ``recipe`` reads the teacher's logits."""
    from nas_asc.train.distill import kd_stages

    return any(stage.uses_teacher for stage in kd_stages(recipe))


def evaluate_study(
    study: optuna.Study,
    trials: Sequence[int] | None = None,
    seeds: int = 3,
    data_root=None,
    progress: bool = True,
    runtime=None,
) -> optuna.Study:
    """Retrain the chosen trials' configurations on the whole training split with ``seeds``
    seeds each, measure their int8 models on the test fold and store the results.

    Args:
        study: a study run by ``nas-asc search`` (any backend) with checkpoints.
        trials: trial numbers; None takes the Pareto set.
        seeds: retrainings per configuration (the first ``seeds`` of the trial's sequence).
        data_root: the dataset root, if not the one the study recorded.
        progress: one line per retraining.

    Returns:
        The study, loaded again with the new attributes.
    """
    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.models import create_model
    from nas_asc.search.artifacts import load_checkpoint, select_trials, study_artifact_store
    from nas_asc.search.holdout import (
        check_recordable,
        load_study_data,
        record_trial_attrs,
        record_unrecorded,
        reload,
    )
    from nas_asc.search.objective import measure_int8, train_candidate
    from nas_asc.search.settings import MAX_EVALUATE_SEEDS
    from nas_asc.study.record import require_budget
    from nas_asc.train.loop import TrainConfig

    say = reporter_for(progress).message
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise NasAscError(f"--seeds must be a positive integer, got {seeds!r}")
    if seeds > MAX_EVALUATE_SEEDS:  # each a full retraining; a typo must not run for years
        raise NasAscError(
            f"--seeds must be at most {MAX_EVALUATE_SEEDS}, got {seeds}; pass --seeds "
            f"{MAX_EVALUATE_SEEDS} or fewer"
        )
    select_trials(study, trials, "evaluate")  # a bad trial number fails before any work
    study_artifact_store(study)  # so does a missing artifact folder
    study = record_unrecorded(study, "evaluate", progress)  # runs a refused write kept
    chosen = select_trials(study, trials, "evaluate")
    todo = []
    for trial in chosen:
        runs = [
            r
            for r in trial.user_attrs.get("evaluation_runs", [])
            if r.get("version") == EVALUATION_VERSION
        ]
        done = {r["index"] for r in runs}
        todo.append((trial, runs, [k for k in range(seeds) if k not in done]))
    total = sum(len(missing) for _, _, missing in todo)
    if total:
        check_recordable(study, "evaluate")  # each retraining is recorded: nothing trained yet
    budget = require_budget(study)
    study_seed = StudyRecord.of(study).seed or 0
    dataset, data_info, protocol = load_study_data(study, data_root, progress)
    if protocol is None:
        raise NasAscError(
            f"study {study.study_name!r} was searched before nas-asc had a validation split (its "
            "figures read the test fold); search again with this version to evaluate"
        )
    view = protocol.final_view()  # the whole training split; the test fold
    teacher = StudyTeacher(view, data_info, progress)
    features: dict[FrontEnd, Any] = {}
    say(
        f"evaluate: {len(chosen)} configuration(s) x {seeds} seed(s), {total} retraining(s) "
        f"to run on the whole training split ({len(view.train):,} clips), each measured on "
        f"the test fold ({len(view.evaluate):,} clips)"
    )
    step = 0
    for trial, runs, missing in todo:
        if not missing:
            continue
        ckpt = load_checkpoint(study, trial)
        frontend = FrontEnd(**ckpt.frontend)
        recipe = TrainConfig(**ckpt.train)
        if frontend not in features:
            if len(features) >= 2:
                features.pop(next(iter(features)))
            features[frontend] = load_features(view, frontend, progress=progress)
        train_set, test_set = features[frontend]
        simulated = None
        if recipe.devicesim_p > 0:
            from nas_asc.data.devicesim import load_simulated_devices

            simulated = load_simulated_devices(
                view, frontend, train_set, data_info.get("ir_dir"), progress=progress
            )
        logits = teacher.logits() if uses_teacher(recipe) else None
        shape = frontend.input_shape()
        for k in missing:
            step += 1
            seed = evaluation_seed(study_seed, trial.number, k)
            started = time.perf_counter()
            torch.manual_seed(seed)
            model = create_model(ckpt.family, **ckpt.model_config)
            c = budget.count(model, shape)
            fitted = train_candidate(
                model,
                recipe,
                train_set,
                logits,
                seed,
                budget=budget,
                complexity=c,
                shape=shape,
                prune=recipe.prune and bool(budget.violations(c)),
                simulated=simulated,
                runtime=runtime,
            )
            fp32, int8, _ = measure_int8(model, fitted.result, train_set, test_set, recipe, seed)
            runs.append(
                {
                    "index": k,
                    "seed": seed,
                    "version": EVALUATION_VERSION,
                    "int8_accuracy": int8.accuracy,
                    "fp32_accuracy": fp32.accuracy,
                    "accuracy_by_device": int8.accuracy_by_device,
                    "seen_accuracy": int8.seen_accuracy,
                    "unseen_accuracy": int8.unseen_accuracy,
                    "macs": fitted.complexity.macs,
                    "param_bytes": fitted.complexity.param_bytes,
                    "train_clips": len(train_set),
                    "test_clips": len(test_set),
                    "train_seconds": fitted.result.seconds,
                }
            )
            runs.sort(key=lambda r: r["index"])
            record_trial_attrs(
                study,
                trial,
                {"evaluation_runs": runs, "evaluation": summarize_runs(runs)},
                f"the retraining with seed {k + 1} of {seeds}",
            )
            unseen = "n/a" if int8.unseen_accuracy is None else f"{int8.unseen_accuracy:.1%}"
            say(
                f"[{step}/{total}] trial {trial.number}, seed {k + 1} of {seeds}: int8 "
                f"{int8.accuracy:.1%} on the test fold (unseen devices {unseen}), "
                f"{time.perf_counter() - started:.0f} s"
            )
    return reload(study)


def format_evaluation(study: optuna.Study, trials: Sequence[int] | None = None) -> str:
    """A table of the evaluated trials: the search model's test accuracy beside the retrained
    configuration's mean ± std over seeds (overall, seen and unseen devices)."""
    rows = []
    wanted = None if trials is None else set(trials)
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        summary = t.user_attrs.get("evaluation")
        if not summary or (wanted is not None and t.number not in wanted):
            continue
        rows.append(
            (
                str(t.number),
                _pct(t.user_attrs.get("int8_accuracy")),
                _pct(t.user_attrs.get("test_int8_accuracy")),
                _pm(summary.get("int8_accuracy")),
                _pm(summary.get("seen_accuracy")),
                _pm(summary.get("unseen_accuracy")),
                str(summary.get("seeds", 0)),
            )
        )
    if not rows:
        return "no evaluated trials"
    header = (
        "trial",
        "val int8 %",
        "test int8 %",
        "retrained int8 %",
        "seen %",
        "unseen %",
        "seeds",
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}"


def _pm(stat) -> str:
    if not stat:
        return "-"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"
