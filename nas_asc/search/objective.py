"""One trial: sample a candidate, gate it on the budget, train it, quantize it, measure it.

Order matters: the candidate's complexity is counted before any training, and a candidate over
budget is recorded as infeasible (its complexity kept, the violations given to the sampler as
Optuna constraints) and never trained.

One exception, when the space sets ``train.prune: true`` (L1-norm structured filter pruning as a
search operator, report 001): a candidate over budget whose prunable layers, cut to
``prune_min_filters`` filters each, would fit is trained at full size, pruned (lowest L1 norm
first) until it fits, fine-tuned for ``prune_finetune_epochs``, and measured; the complexity it
records (objectives, constraints, user attributes) is the pruned model's, and ``pruning`` holds
the counts before and after. A candidate that could not fit even at that floor is infeasible and
never trained, as above.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from nas_asc.budget import Budget
from nas_asc.complexity import Complexity, parse_input_shape
from nas_asc.data.features import FeatureSet, FrontEnd, load_features
from nas_asc.data.tau22 import SCENES
from nas_asc.device import resolve_device, runtime_info
from nas_asc.errors import DatasetError
from nas_asc.memory import peak_activation_bytes
from nas_asc.models._registry import get_model_revision
from nas_asc.progress import Reporter, TrialReport, format_bytes, format_macs, reporter_for
from nas_asc.search.artifacts import (
    Checkpoint,
    calibration_indices,
    save_checkpoint,
    save_confusion_image,
)
from nas_asc.search.pruning import EPOCH_ACCURACY, EpochPruner, NopPruner
from nas_asc.search.samplers import trial_seed
from nas_asc.search.space import SearchSpace
from nas_asc.search.study import DIRECTIONS, OBJECTIVE_NAMES, fit_to_space, retry_history
from nas_asc.study.storage import trial_storage_id
from nas_asc.train import accel
from nas_asc.train.loop import TrainConfig, TrainResult, evaluate, train
from nas_asc.train.prune import PruneResult, min_complexity, prune_to_fit
from nas_asc.train.quantize import convert_qat, fake_quant_disabled, quantize_ptq

__all__ = [
    "MACHINE_ERRORS",
    "machine_error_in",
    "machine_error_text",
    "Candidate",
    "SearchContext",
    "Objective",
    "OBJECTIVE_NAMES",
    "DIRECTIONS",
    "TrialError",
    "Fitted",
    "Measured",
    "format_complexity",
    "measure_int8",
    "train_candidate",
    "retry_history",
    "trial_seed",
]

_LOG = logging.getLogger(__name__)

#: Errors of the machine, the data or the study's storage (a full disk, a broken audio file, a
#: database locked past its busy timeout): every later trial would meet them too, and none is
#: the candidate's fault, so they stop the search and the backend re-queues the trial.
MACHINE_ERRORS = (OSError, DatasetError, optuna.exceptions.StorageInternalError)


def machine_error_in(exc: BaseException) -> BaseException | None:
    """``exc`` if it is a machine error, else the first one it was raised from or while
    handling: Optuna turns a storage error during its own bookkeeping of a trial into an
    ``AssertionError("Should not reach.")`` raised on top of it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MACHINE_ERRORS):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def machine_error_text(exc: BaseException) -> str:
    """``Type: first line`` of a machine error; for a storage error, of the driver's error under
    it (Optuna's own text only says a commit failed)."""
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TrialError(Exception):
    """A failure inside one trial: the candidate's config, training, quantization or memory.

    The objective raises it (chained to the original exception) for any error of the candidate,
    whatever its type (families from elsewhere check configs with ``assert`` as often as with
    ``ValueError``); the trial is failed with its reason and the search goes on. Errors of the
    machine, the data or the storage (:data:`MACHINE_ERRORS`) are raised as they are and stop
    the search, since every later trial would meet them too.
    """


@dataclass
class SearchContext:
    """What every trial of a search shares: space, budget, data, teacher, seed.

    ``dataset`` is the search view of a :class:`~nas_asc.data.protocol.Protocol` (train: the
    training part, evaluate: the validation split), so every decision of a trial (objectives,
    early stopping, normalization, calibration, device simulation) is made without the test
    fold, which the view does not hold. Anything else is refused.
    """

    space: SearchSpace
    budget: Budget
    dataset: Any  # nas_asc.data.tau22.TAU22, a search view (Protocol.search_view)
    teacher_logits: torch.Tensor | None
    seed: int = 0
    progress: bool = True  # data loading prints its progress
    artifact_store: Any = None  # optuna FileSystemArtifactStore for checkpoints, or None
    ir_dir: str | None = None  # impulse-response WAVs for device simulation (None: generated)
    reporter: Reporter | None = None  # trial progress; None: ConsoleReporter, or silent
    # without progress
    _features: dict[FrontEnd, tuple[FeatureSet, FeatureSet]] = field(default_factory=dict)
    _simulated: dict[FrontEnd, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reporter is None:
            self.reporter = reporter_for(self.progress)
        role = getattr(self.dataset, "role", None)
        if role != "search":
            raise ValueError(
                f"a search runs on a search view of the dataset (training part and validation "
                f"split), got a {role!r} dataset; pass make_protocol(dataset, "
                "ValidationSpec()).search_view() so the test fold stays unread"
            )

    def __getstate__(self) -> dict:
        # sent to worker processes: they load features from the on-disk cache themselves
        state = self.__dict__.copy()
        state["_features"] = {}
        state["_simulated"] = {}
        return state

    def simulated(self, frontend: FrontEnd):
        """Device-simulated copies of the device-A training clips for ``frontend`` (cached)."""
        from nas_asc.data.devicesim import load_simulated_devices

        if frontend not in self._simulated:
            if len(self._simulated) >= 2:
                self._simulated.pop(next(iter(self._simulated)))
            train_set, _ = self.features(frontend)
            self._simulated[frontend] = load_simulated_devices(
                self.dataset, frontend, train_set, self.ir_dir, progress=self.progress
            )
        return self._simulated[frontend]

    def features(self, frontend: FrontEnd) -> tuple[FeatureSet, FeatureSet]:
        """Training-part/validation features for ``frontend``, loaded once per search."""
        if frontend not in self._features:
            # the sets map the shared feature cache (nothing private to hold), but their copies
            # on a GPU are not: keep the four most recent front ends
            if len(self._features) >= 4:
                self._features.pop(next(iter(self._features)))
            self._features[frontend] = load_features(self.dataset, frontend, self.progress)
        return self._features[frontend]


@dataclass
class Candidate:
    """A sampled candidate, built and counted, before any training."""

    config: dict[str, dict[str, Any]]  # the full config: model, frontend, train
    frontend: FrontEnd
    recipe: TrainConfig
    seed: int
    model: torch.nn.Module
    shape: tuple[int, int, int]
    complexity: Complexity
    violations: list[str] = field(default_factory=list)  # budget rules it breaks as built
    prune: bool = False  # over budget, but filter pruning brings it in: train, then cut
    started: float = 0.0  # time.perf_counter() when its training began


class Objective:
    """Callable Optuna objective returning ``(int8 accuracy, MACs, parameter bytes)``, and peak
    activation bytes fourth in a study created with the RAM objective.

    One trial runs in stages, each a method: :meth:`propose` (sample, seed, build, count),
    :meth:`gate` (the budget decides: train, train then prune, or never train),
    :meth:`fit` (train, stopping early when the pruner says so; prune and fine-tune),
    :meth:`measure` (int8 on the validation split) and :meth:`record` (user attributes,
    checkpoint, the reporter's line). The values go back to Optuna.

    Args:
        context: what every trial shares.
        pruner: early stopping between epochs (``nas_asc.search.pruning``); None never stops.
        runtime: where and how this worker trains (device, threads, compile); None: the
            defaults of :class:`~nas_asc.train.accel.AccelOptions` (the CPU).
    """

    def __init__(
        self,
        context: SearchContext,
        pruner: EpochPruner | None = None,
        runtime: accel.AccelOptions | None = None,
    ) -> None:
        self.ctx = context
        self.pruner = pruner
        self.runtime = runtime if runtime is not None else accel.AccelOptions()
        self.trial_id: int | None = None  # the storage id of the trial last started

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        self.trial_id = trial_storage_id(trial)  # the backend re-queues it if the machine stops it
        try:
            candidate = self.propose(trial)
            if not self.gate(trial, candidate):
                return self.record_infeasible(trial, candidate)
            fitted = self.fit(trial, candidate)
            measured = self.measure(candidate, fitted)
            return self.record(trial, candidate, fitted, measured)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            # Optuna keeps no exception text; record it so reports and the dashboard show it
            reason = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, MACHINE_ERRORS):
                # the machine or the data: every trial would fail alike, so the search stops;
                # not the candidate's fault, so the backend re-queues the trial (requeue_trial)
                raise
            trial.set_user_attr("status", "failed")
            trial.set_user_attr("fail_reason", reason)
            self._report(trial, "failed", f"failed ({reason}); the study goes on")
            raise TrialError(reason) from exc

    # -- stages -----------------------------------------------------------------------------

    def propose(self, trial: optuna.Trial) -> Candidate:
        """Sample the trial's config, seed it, build the model and count its complexity."""
        ctx = self.ctx
        if isinstance(trial, optuna.Trial):  # a re-queued copy, queued under other bounds
            fit_to_space(trial, {d.name: d.distribution() for d in ctx.space.dimensions})
        cfg = ctx.space.sample(trial)
        trial.set_user_attr("config", cfg)
        frontend = FrontEnd(**cfg["frontend"])
        recipe = TrainConfig(**cfg["train"])
        if recipe.prune and recipe.quantization == "qat" and not recipe.prune_finetune_epochs:
            raise ValueError(
                "train.quantization: qat with train.prune needs prune_finetune_epochs >= 1 "
                "(QAT runs while the pruned model is fine-tuned)"
            )
        # a re-queued trial (its first worker died) keeps the seed of the trial it repeats
        seed = trial_seed(ctx.seed, _original_number(trial))
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        torch.manual_seed(seed)
        model = _build(ctx.space.model, cfg["model"])
        shape = frontend.input_shape()
        c = ctx.budget.count(model, shape, activations=True)
        _record_complexity(trial, c)
        return Candidate(cfg, frontend, recipe, seed, model, shape, c)

    def gate(self, trial: optuna.Trial, candidate: Candidate) -> bool:
        """Decide on the budget before any training; False: over budget, never trained.

        With ``train.prune`` a candidate over budget is trained if its prunable layers, cut to
        ``prune_min_filters`` filters each, would fit (it is pruned after training).
        """
        budget, recipe, c = self.ctx.budget, candidate.recipe, candidate.complexity
        violations = budget.violations(c)
        prune = bool(violations) and recipe.prune
        if prune:
            floor = min_complexity(
                candidate.model,
                candidate.shape,
                budget.weight_dtype,
                recipe.prune_min_filters,
                activations=budget.limits_ram,
                rule=budget.rule,
            )
            trial.set_user_attr("prune_floor", floor.to_dict())
            floor_violations = budget.violations(floor)
            if floor_violations:
                violations = [
                    f"{v}, even pruned to {recipe.prune_min_filters} filters per layer"
                    for v in floor_violations
                ]
                prune = False
        if not prune:
            _set_constraints(trial, budget, c)
        candidate.violations, candidate.prune = violations, prune
        return prune or not violations

    def fit(self, trial: optuna.Trial, candidate: Candidate) -> Fitted:
        """Train the candidate (the pruner may stop it after an epoch); prune and fine-tune it
        if the gate said so, then record the complexity it ends with."""
        ctx = self.ctx
        candidate.started = time.perf_counter()
        # where it trains and with which libraries (figures of other devices may differ in
        # their float rounding)
        trial.set_user_attr("runtime", runtime_info(resolve_device(self.runtime.device)))
        train_set, eval_set = ctx.features(candidate.frontend)
        simulated = ctx.simulated(candidate.frontend) if candidate.recipe.devicesim_p > 0 else None
        fitted = train_candidate(
            candidate.model,
            candidate.recipe,
            train_set,
            ctx.teacher_logits,
            candidate.seed,
            budget=ctx.budget,
            complexity=candidate.complexity,
            shape=candidate.shape,
            prune=candidate.prune,
            on_epoch=self._epoch_callback(trial, candidate, eval_set),
            simulated=simulated,
            on_step=self._step_callback(trial, candidate),
            runtime=self.runtime,
        )
        if fitted.pruning is not None:
            trial.set_user_attr("pruning", fitted.pruning.to_dict())
            _record_complexity(trial, fitted.complexity)
            _set_constraints(trial, ctx.budget, fitted.complexity)
        return fitted

    def measure(self, candidate: Candidate, fitted: Fitted) -> Measured:
        """Quantize to int8 and measure the int8 model and its float network on validation."""
        train_set, eval_set = self.ctx.features(candidate.frontend)
        fp32, int8, n_calib = measure_int8(
            candidate.model, fitted.result, train_set, eval_set, candidate.recipe, candidate.seed
        )
        return Measured(fp32, int8, n_calib)

    def record(
        self, trial: optuna.Trial, candidate: Candidate, fitted: Fitted, measured: Measured
    ) -> tuple[float, ...]:
        """Write the trial's figures, save its checkpoint, report it; return its objectives."""
        result, c, fp32, int8 = fitted.result, fitted.complexity, measured.fp32, measured.int8
        attrs = {
            "status": "trained",
            "fp32_accuracy": fp32.accuracy,
            "int8_accuracy": int8.accuracy,
            "int8_drop": fp32.accuracy - int8.accuracy,
            "quantization": candidate.recipe.quantization,
            "fp32_log_loss": fp32.log_loss,
            "int8_log_loss": int8.log_loss,
            "accuracy_by_device": int8.accuracy_by_device,
            "fp32_accuracy_by_device": fp32.accuracy_by_device,
            "seen_accuracy": int8.seen_accuracy,
            "unseen_accuracy": int8.unseen_accuracy,
            "confusion": int8.confusion.tolist(),
            "train_seconds": result.seconds,
            "train_accel": result.accel,  # threads, layout, fused AdamW, compiled
            "trial_seconds": time.perf_counter() - candidate.started,
            "history": result.history,
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.ctx.artifact_store is not None:
            # QAT: the fake-quant network (weights, folded BatchNorm, calibrated ranges), from
            # which export converts the same int8 model; PTQ: the float network
            trained = result.qat_model if result.qat_model is not None else candidate.model
            self._save_artifacts(trial, candidate, trained, c, measured.n_calib, attrs, fitted)
        self._report(
            trial,
            "trained",
            f"int8 {int8.accuracy:.1%} (fp32 {fp32.accuracy:.1%}) on validation, "
            f"{format_complexity(c)}, trained in {result.seconds:.0f} s",
        )
        return _values(trial, int8.accuracy, c)

    def record_infeasible(self, trial: optuna.Trial, candidate: Candidate) -> tuple[float, ...]:
        """Record a candidate over budget (its complexity and why); it is never trained."""
        c = candidate.complexity
        reason = "; ".join(candidate.violations)
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("infeasible_reason", reason)
        self._report(trial, "infeasible", f"over budget ({reason}), not trained")
        return _values(trial, 0.0, c)

    # -- helpers ----------------------------------------------------------------------------

    def _report(self, trial: optuna.Trial, state: str, summary: str) -> None:
        dims = self.ctx.space.dimensions
        params = {d.name: trial.params[d.name] for d in dims if d.name in trial.params}
        try:
            # this trial is still running in the storage; a rejected proposal does not count
            done = _done_count(trial) + (state != "infeasible")
        except Exception:  # the storage itself failing: the line still goes out, uncounted
            done = -1
        self.ctx.reporter.trial_finished(TrialReport(trial.number, state, params, summary, done))

    def _epoch_callback(self, trial: optuna.Trial, candidate: Candidate, eval_set: FeatureSet):
        """After each epoch: report it; with a pruner, record the validation accuracy and ask
        the pruner whether to stop.

        Never after the last epoch: the training is done by then, and stopping would only
        throw away its result.
        """
        pruning = self.pruner is not None and not isinstance(self.pruner, NopPruner)
        epochs = candidate.recipe.epochs
        c = candidate.complexity
        curve: list[float] = []
        reporter = self.ctx.reporter

        def on_epoch(epoch: int, record: dict, model: torch.nn.Module) -> None:
            metrics = {"loss": record["loss"]}
            if pruning:
                curve.append(evaluate(model, eval_set).accuracy)
                model.train()
                trial.set_user_attr(EPOCH_ACCURACY, curve)
                metrics["validation accuracy"] = curve[-1]
            reporter.epoch(trial.number, epoch + 1, epochs, metrics)
            if not pruning or epoch + 1 >= epochs:
                return
            if self.pruner.should_prune(
                trial.study, trial.number, c.macs, c.param_bytes, curve, c.peak_activation_bytes
            ):
                trial.set_user_attr("status", "pruned")
                trial.set_user_attr("last_accuracy", curve[-1])
                trial.set_user_attr("pruned_at_epoch", epoch)
                self._report(
                    trial,
                    "pruned",
                    f"stopped after epoch {epoch + 1} of {epochs} (validation accuracy "
                    f"{curve[-1]:.1%}, beaten by trials of equal or lower complexity)",
                )
                raise optuna.TrialPruned(f"dominated after epoch {epoch + 1}")

        return on_epoch

    def _step_callback(self, trial: optuna.Trial, candidate: Candidate):
        """Steps inside an epoch, for the reporter's progress within long epochs."""
        reporter, epochs, number = self.ctx.reporter, candidate.recipe.epochs, trial.number

        def on_step(epoch: int, step: int, steps: int) -> None:
            reporter.step(number, epoch + 1, epochs, step, steps)

        return on_step

    def _save_artifacts(self, trial, candidate, model, c, n_calib, attrs, fitted) -> None:
        checkpoint = Checkpoint(
            family=self.ctx.space.model,
            model_config=dict(candidate.config["model"]),
            frontend=dict(candidate.config["frontend"]),
            train=dict(candidate.config["train"]),
            state_dict=model.state_dict(),
            seed=candidate.seed,
            calibration={"seed": candidate.seed, "n": n_calib},
            complexity=c.to_dict(),
            pruned=fitted.pruned,
            metrics={k: attrs[k] for k in _CHECKPOINT_METRICS},
            quantization=attrs["quantization"],
            model_revision=get_model_revision(self.ctx.space.model),
        )
        save_checkpoint(trial, self.ctx.artifact_store, checkpoint)
        save_confusion_image(
            trial,
            self.ctx.artifact_store,
            attrs["confusion"],
            list(SCENES),
            f"trial {trial.number}: int8 {attrs['int8_accuracy']:.1%} on the validation split",
        )


@dataclass
class Measured:
    """A trained candidate's int8 and float figures on the validation split."""

    fp32: Any  # nas_asc.train.loop.EvalResult
    int8: Any
    n_calib: int  # training clips that calibrated PTQ


def format_complexity(c: Complexity) -> str:
    """``3.21 M MACs, 45.6 kB``: the units of the report's tables."""
    return f"{format_macs(c.macs)} MACs, {format_bytes(c.param_bytes)}"


def _values(trial: optuna.Trial, accuracy: float, c: Complexity) -> tuple[float, ...]:
    """The trial's objective values, in the study's order (:func:`objective_names`)."""
    values = (accuracy, float(c.macs), float(c.param_bytes))
    if len(trial.study.directions) == len(OBJECTIVE_NAMES):
        return values
    if c.peak_activation_bytes is None:
        raise ValueError(
            "the study minimizes peak activation RAM, but this network cannot be traced with "
            "torch.fx to count it; search it without --ram-objective"
        )
    return (*values, float(c.peak_activation_bytes))


def _record_complexity(trial: optuna.Trial, c: Complexity) -> None:
    trial.set_user_attr("params", c.params)
    trial.set_user_attr("param_bytes", c.param_bytes)
    trial.set_user_attr("macs", c.macs)
    trial.set_user_attr("peak_activation_bytes", c.peak_activation_bytes)  # None: untraceable


def _set_constraints(trial: optuna.Trial, budget: Budget, c: Complexity) -> None:
    for key, value in budget.constraints(c).items():
        trial.set_constraint(key, value)
    trial.set_user_attr("feasible", budget.fits(c))


def _done_count(trial: optuna.Trial) -> int:
    from nas_asc.search.study import trial_counts

    return trial_counts(trial.study).done


_CHECKPOINT_METRICS = (
    "fp32_accuracy",
    "int8_accuracy",
    "accuracy_by_device",
    "fp32_accuracy_by_device",
    "seen_accuracy",
    "unseen_accuracy",
)


@dataclass
class Fitted:
    """A trained candidate: the training result, its complexity and, if filter-pruned, how."""

    result: TrainResult
    complexity: Complexity
    pruning: PruneResult | None = None

    @property
    def pruned(self) -> dict[str, int] | None:
        """Filters kept per pruned layer (for the checkpoint), or None."""
        return None if self.pruning is None else self.pruning.filters_after


def train_candidate(
    model: torch.nn.Module,
    recipe: TrainConfig,
    train_set: FeatureSet,
    teacher_logits: torch.Tensor | None,
    seed: int,
    *,
    budget: Budget,
    complexity: Complexity,
    shape: tuple[int, int, int],
    prune: bool = False,
    on_epoch=None,
    simulated=None,
    on_step=None,
    runtime: accel.AccelOptions | None = None,
) -> Fitted:
    """Train a candidate with its recipe; with ``prune``, then cut its lowest-L1 filters until
    it fits ``budget`` and fine-tune it (``recipe.prune_finetune_epochs``).

    One procedure for a search trial and for ``nas-asc evaluate``'s retraining. A candidate to
    be pruned trains in float first; QAT, if asked, runs while it is fine-tuned.

    Args:
        complexity: the candidate's complexity as built (what a candidate that is not pruned
            keeps).
        shape: its input shape, for recounting while pruning.
        runtime: device, threads and compile of the training (``train``'s).
    """
    first = dataclasses.replace(recipe, quantization="ptq") if prune else recipe
    result = train(
        model,
        train_set,
        first,
        teacher_logits,
        seed=seed,
        on_epoch=on_epoch,
        simulated=simulated,
        on_step=on_step,
        runtime=runtime,
    )
    if not prune:
        return Fitted(result, complexity)
    floor = recipe.prune_min_filters
    pruning = prune_to_fit(
        model,
        budget.fits,
        shape,
        budget.weight_dtype,
        1,
        floor,
        activations=budget.limits_ram,
        rule=budget.rule,
    )
    if recipe.prune_finetune_epochs:
        finetune = dataclasses.replace(
            recipe, epochs=recipe.prune_finetune_epochs, warmup_epochs=0, qat_epochs=None
        )
        tuned = train(
            model,
            train_set,
            finetune,
            teacher_logits,
            seed=seed + 1,
            simulated=simulated,
            runtime=runtime,
        )
        result.history += [{**h, "phase": "finetune"} for h in tuned.history]
        result.seconds += tuned.seconds
        result.qat_model = tuned.qat_model
    after = pruning.after
    if not budget.limits_ram:  # the pruning loop counted bytes and MACs only
        peak = peak_activation_bytes(model, parse_input_shape(shape))
        after = dataclasses.replace(after, peak_activation_bytes=peak)
    return Fitted(result, after, pruning)


def measure_int8(model, result, train_set, eval_set, recipe: TrainConfig, seed: int):
    """Quantize a trained candidate to int8 and measure it and its float network.

    PTQ: ``model`` calibrated on ``recipe.calibration_batches`` batches of training clips chosen
    by ``seed`` (:func:`~nas_asc.search.artifacts.calibration_indices`). QAT
    (``result.qat_model``): the fake-quant network converted with the ranges it learned; its float
    view (fake quantization off) gives the fp32 figure.

    Returns:
        ``(fp32 EvalResult, int8 EvalResult, calibration clips used)``.
    """
    n_calib = min(len(train_set), recipe.calibration_batches * recipe.batch_size)
    if result.qat_model is not None:
        with fake_quant_disabled(result.qat_model):
            fp32 = evaluate(result.qat_model, eval_set)
        int8_model = convert_qat(result.qat_model)
    else:
        fp32 = evaluate(model, eval_set)
        calibration = train_set.batch(calibration_indices(len(train_set), seed, n_calib))
        int8_model = quantize_ptq(model, calibration)
    return fp32, evaluate(int8_model, eval_set), n_calib


def _original_number(trial: optuna.Trial) -> int:
    """The number of the first trial in a chain of retries (the trial's own if not a retry)."""
    frozen = next(
        (t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number), None
    )
    if frozen is None:
        return trial.number
    history = retry_history(frozen)
    return history[0] if history else trial.number


def _build(family: str, model_cfg: dict) -> torch.nn.Module:
    from nas_asc.models import create_model

    return create_model(family, **model_cfg)
