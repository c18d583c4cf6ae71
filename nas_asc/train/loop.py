"""Training and evaluation of one candidate on in-memory features.

The recipe follows the seed reports (shared/seeds/003 Sec. 4, 000, 001, 004): AdamW with a
linear warm-up and cosine decay; augmentation on the input features (device-simulation swaps,
mixup, Freq-MixStyle, SpecAugment; :mod:`nas_asc.train.augment`); knowledge distillation from
cached teacher-ensemble logits by one of the strategies of :mod:`nas_asc.train.distill` (Hinton,
relational-then-response "RRS", deep mutual learning then KD fine-tuning), whose stages run one
after the other under one learning-rate schedule; and int8 quantization, either post-training
(done by the caller) or quantization-aware training for the last epochs (done here).

Features are one tensor in memory and batches are taken by indexing it, with no per-sample
Python work. Every random draw (batch order, augmentation) comes from one ``torch.Generator``
seeded by ``seed``, so a run is reproducible bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_asc.train import accel
from nas_asc.train.augment import device_swap, freq_mixstyle, mixup, spec_augment
from nas_asc.train.distill import KD_WEIGHTINGS, Stage, kd_stages, list_kd_strategies

__all__ = [
    "AMP_MODES",
    "QUANTIZATION_MODES",
    "TrainConfig",
    "TrainResult",
    "EvalResult",
    "TrainingDiverged",
    "train",
    "evaluate",
    "predict",
]

# "ptq": post-training static int8 after float training (the caller calibrates and converts);
# "qat": quantization-aware training with fake quantization for the last qat_epochs epochs
QUANTIZATION_MODES = ("ptq", "qat")

# automatic mixed precision of the forward pass (torch.autocast); "off" by default because on
# the CPU bf16 autocast was measured slower (0.55-1.0x, nas_asc.train.accel) and on a GPU it was
# not measured here; fp16 scales the loss (torch.amp.GradScaler)
AMP_MODES = ("off", "bf16", "fp16")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8  # passes over the training split, all stages together
    batch_size: int = 64  # clips per optimizer step
    lr: float = 1e-2  # peak learning rate (AdamW), after linear warm-up
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_epochs: int = 1  # linear warm-up from 0 to lr, then cosine decay to 0
    mixstyle_alpha: float = 0.3  # Freq-MixStyle Beta(alpha, alpha) mixing coefficient
    mixstyle_p: float = 0.4  # probability that a batch is Freq-MixStyled
    kd_temperature: float = 2.0  # distillation temperature T (also DML's softening temperature)
    kd_lambda: float = 0.5  # weight of T^2 * KL(teacher || student), see kd_weighting
    kd_weighting: str = "convex"  # convex: (1-lambda)*CE + lambda*KD; additive: CE + lambda*KD
    kd_strategy: str = "hinton"  # hinton | rrs (relational, then response) | dml (mutual, then KD)
    kd_stage1_fraction: float = 0.5  # rrs/dml: share of epochs in stage 1 (floor of the product)
    rkd_distance: float = 1.0  # rrs stage 1: weight of the distance-wise relational loss
    rkd_angle: float = 2.0  # rrs stage 1: weight of the angle-wise relational loss
    dml_peers: int = 1  # dml: peer networks (re-initialised copies of the student) in stage 1
    dml_lambda: float = 1.0  # dml: weight of the mean KL to the other participants
    specaugment_p: float = 0.0  # probability that a clip gets a frequency and a time mask
    freq_mask: int = 8  # SpecAugment: largest frequency-mask width (Mel bins)
    time_mask: int = 8  # SpecAugment: largest time-mask width (frames)
    mixup_alpha: float = 0.3  # mixup Beta(alpha, alpha) mixing coefficient
    mixup_p: float = 0.0  # probability that a batch is mixed up
    devicesim_p: float = 0.0  # probability that a device-A clip is swapped for a simulated copy
    quantization: str = "ptq"  # ptq (post-training static int8) | qat (quantization-aware)
    qat_epochs: int | None = None  # qat: fake-quantize the last N epochs (None or > epochs: all)
    qat_warmup_epochs: float = 0.5  # qat after float epochs: the new optimizer's linear warm-up
    calibration_batches: int = 8  # batches of training data used to calibrate int8 PTQ
    prune: bool = False  # over budget: train, prune lowest-L1 filters until it fits, fine-tune
    prune_finetune_epochs: int = 1  # fine-tuning epochs after pruning
    prune_min_filters: int = 4  # no pruned layer keeps fewer filters than this
    amp: str = "off"  # automatic mixed precision of the forward pass: off | bf16 | fp16

    def __post_init__(self) -> None:
        if self.kd_weighting == "additive":
            kd_lambda_ok, kd_lambda_rule = self.kd_lambda >= 0, ">= 0 with additive weighting"
        else:
            kd_lambda_ok = 0.0 <= self.kd_lambda <= 1.0
            kd_lambda_rule = "in [0, 1] with convex weighting (use kd_weighting=additive for > 1)"
        strategies = list_kd_strategies()
        # (holds, field, rule the value breaks)
        checks = [
            (_is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1"),
            (_is_int(self.batch_size) and self.batch_size >= 2, "batch_size", "an integer >= 2"),
            (self.lr > 0, "lr", "> 0"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs", ">= 0"),
            (self.mixstyle_alpha > 0, "mixstyle_alpha", "> 0"),
            (0.0 <= self.mixstyle_p <= 1.0, "mixstyle_p", "in [0, 1]"),
            (self.kd_temperature > 0, "kd_temperature", "> 0"),
            (
                self.kd_weighting in KD_WEIGHTINGS,
                "kd_weighting",
                f"one of {', '.join(KD_WEIGHTINGS)}",
            ),
            (kd_lambda_ok, "kd_lambda", kd_lambda_rule),
            (self.kd_strategy in strategies, "kd_strategy", f"one of {', '.join(strategies)}"),
            (0.0 <= self.kd_stage1_fraction <= 1.0, "kd_stage1_fraction", "in [0, 1]"),
            (self.rkd_distance >= 0, "rkd_distance", ">= 0"),
            (self.rkd_angle >= 0, "rkd_angle", ">= 0"),
            (_is_int(self.dml_peers) and self.dml_peers >= 1, "dml_peers", "an integer >= 1"),
            (self.dml_lambda >= 0, "dml_lambda", ">= 0"),
            (0.0 <= self.specaugment_p <= 1.0, "specaugment_p", "in [0, 1]"),
            (_is_int(self.freq_mask) and self.freq_mask >= 0, "freq_mask", "an integer >= 0"),
            (_is_int(self.time_mask) and self.time_mask >= 0, "time_mask", "an integer >= 0"),
            (self.mixup_alpha > 0, "mixup_alpha", "> 0"),
            (0.0 <= self.mixup_p <= 1.0, "mixup_p", "in [0, 1]"),
            (0.0 <= self.devicesim_p <= 1.0, "devicesim_p", "in [0, 1]"),
            (
                self.quantization in QUANTIZATION_MODES,
                "quantization",
                f"one of {', '.join(QUANTIZATION_MODES)}",
            ),
            (
                self.qat_epochs is None or (_is_int(self.qat_epochs) and self.qat_epochs >= 1),
                "qat_epochs",
                "null (the whole run) or an integer >= 1",
            ),
            (self.qat_warmup_epochs >= 0, "qat_warmup_epochs", ">= 0"),
            (self.calibration_batches >= 1, "calibration_batches", ">= 1"),
            (
                _is_int(self.prune_finetune_epochs) and self.prune_finetune_epochs >= 0,
                "prune_finetune_epochs",
                "an integer >= 0",
            ),
            (
                _is_int(self.prune_min_filters) and self.prune_min_filters >= 1,
                "prune_min_filters",
                "an integer >= 1",
            ),
            (self.amp in AMP_MODES, "amp", f"one of {', '.join(AMP_MODES)}"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(
                    f"train config: {name} must be {rule}, got {name}={getattr(self, name)!r}"
                )

    def to_dict(self) -> dict:
        """The fields as a dict; ``amp`` only when it is on, so that the keys of caches and
        records made before the field existed stay what they were."""
        out = asdict(self)
        if out["amp"] == "off":
            del out["amp"]
        return out

    @property
    def qat_start(self) -> int | None:
        """Epoch at which quantization-aware training begins, or None for PTQ."""
        if self.quantization != "qat":
            return None
        return max(0, self.epochs - self.qat_epochs) if self.qat_epochs else 0


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    seconds: float  # wall time of the training loop
    history: list[dict] = field(default_factory=list)  # per epoch: stage, loss, train accuracy
    qat_model: nn.Module | None = None  # quantization="qat": the trained fake-quant model
    accel: dict = field(default_factory=dict)  # speed settings used (TrainingAccel.summary)


@dataclass
class EvalResult:
    accuracy: float  # top-1 over all clips
    log_loss: float  # mean cross-entropy
    accuracy_by_device: dict[str, float]  # top-1 per recording device
    seen_accuracy: float  # mean over devices seen in training (a, b, c, s1-s3) present
    unseen_accuracy: float | None  # mean over unseen devices (s4-s6), None if absent
    confusion: np.ndarray  # (classes, classes) counts, rows = true scene
    logits: torch.Tensor  # (clips, classes)

    def summary(self) -> dict:
        """JSON-friendly figures (no logits)."""
        return {
            "accuracy": self.accuracy,
            "log_loss": self.log_loss,
            "accuracy_by_device": self.accuracy_by_device,
            "seen_accuracy": self.seen_accuracy,
            "unseen_accuracy": self.unseen_accuracy,
        }


def device_breakdown(seen_accuracy: float | None, unseen_accuracy: float | None) -> str:
    """The per-device figures beside an overall accuracy, named for what they are: means of the
    per-device accuracies (not the overall figure over clips). Without unseen devices (the
    validation split holds only devices seen in training) there is one mean, over all devices.

    Example:
        >>> device_breakdown(0.406, None)
        'mean over devices 40.6%'
        >>> device_breakdown(0.61, 0.48)
        'mean over seen devices 61.0%, over unseen devices 48.0%'
    """
    if seen_accuracy is None or seen_accuracy != seen_accuracy:  # none, or NaN (no seen device)
        return "" if unseen_accuracy is None else f"mean over unseen devices {unseen_accuracy:.1%}"
    if unseen_accuracy is None:
        return f"mean over devices {seen_accuracy:.1%}"
    return f"mean over seen devices {seen_accuracy:.1%}, over unseen devices {unseen_accuracy:.1%}"


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _adamw(modules: list[nn.Module], config: TrainConfig, fused: bool) -> torch.optim.AdamW:
    params = [p for m in modules for p in m.parameters()]
    return accel.make_adamw(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _gather_teacher(
    train_set, teacher_logits: torch.Tensor | None, stages: list[Stage]
) -> torch.Tensor | None:
    if teacher_logits is None or not any(stage.uses_teacher for stage in stages):
        return None
    teacher = teacher_logits[train_set.rows]
    if not torch.isfinite(teacher).all():
        raise ValueError("teacher logits are missing (NaN) for some training clips")
    return teacher


def _check_simulated(simulated, train_set, config: TrainConfig):
    """The simulated-device copies when ``devicesim_p > 0``, checked against the split."""
    if config.devicesim_p == 0:
        return None
    if simulated is None:
        raise ValueError(
            f"train config: devicesim_p={config.devicesim_p} needs simulated device copies; pass "
            "simulated=load_simulated_devices(dataset, frontend, train_set) or set devicesim_p=0"
        )
    shape, expected = tuple(simulated.x.shape), (len(train_set), *train_set.shape[1:])
    if len(shape) != 5 or (shape[0], *shape[2:]) != expected or shape[1] < 1:
        raise ValueError(
            f"simulated devices have shape {shape}, expected ({expected[0]}, copies, "
            f"{', '.join(map(str, expected[1:]))}) for this training split; load them for the "
            "same dataset, front end and training split"
        )
    if tuple(simulated.available.shape) != (len(train_set),):
        raise ValueError(
            f"simulated devices mark {tuple(simulated.available.shape)} clips as available, "
            f"expected ({len(train_set)},); load them for the same training split"
        )
    if not simulated.available.any():
        raise ValueError(
            f"train config: devicesim_p={config.devicesim_p} but no training clip has a simulated "
            "copy (no device-A clips); set devicesim_p=0 for this dataset"
        )
    return simulated


def _make_peers(model: nn.Module, count: int, seed: int) -> list[nn.Module]:
    """DML peers: copies of ``model`` with every layer re-initialised from its own seed.

    The global random state is left untouched, so the caller's stream does not depend on whether
    peers were made.
    """
    peers = []
    for k in range(count):
        peer = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((seed * 7919 + 104729 * (k + 1)) % (2**63))
            for module in peer.modules():
                if module is not peer and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        peer.train()
        peers.append(peer)
    return peers


def _start_qat(model: nn.Module, train_set) -> nn.Module:
    from nas_asc.train.quantize import prepare_qat

    return prepare_qat(model, train_set.batch(slice(0, 1)))


def _set_observers(model: nn.Module, enabled: bool) -> None:
    from torch.ao.quantization import disable_observer, enable_observer

    model.apply(enable_observer if enabled else disable_observer)


def _stage_losses(
    stage: Stage,
    logits: list[torch.Tensor],
    y: torch.Tensor,
    teacher: torch.Tensor | None,
    mix: tuple[torch.Tensor | None, float],
    config: TrainConfig,
) -> list[torch.Tensor]:
    """One loss per network; under mixup ``lam * L(y, t) + (1 - lam) * L(y[perm], t[perm])``."""
    losses = stage.loss(logits, y, teacher, config)
    perm, lam = mix
    if perm is None:
        return losses
    other = stage.loss(logits, y[perm], None if teacher is None else teacher[perm], config)
    return [lam * a + (1.0 - lam) * b for a, b in zip(losses, other, strict=True)]


def train(
    model: nn.Module,
    train_set,
    config: TrainConfig,
    teacher_logits: torch.Tensor | None = None,
    seed: int = 0,
    on_epoch: Callable[[int, dict, nn.Module], None] | None = None,
    simulated=None,
    on_step: Callable[[int, int, int], None] | None = None,
    runtime: accel.AccelOptions | None = None,
) -> TrainResult:
    """Train ``model`` on a :class:`~nas_asc.data.features.FeatureSet` with ``config``'s recipe.

    The stages of ``config.kd_strategy`` run one after the other, counting epochs together, under
    one warm-up + cosine learning-rate schedule. With ``quantization="qat"``, at epoch
    ``epochs - qat_epochs`` (or 0) training switches to a fake-quantized copy of the model
    (:func:`nas_asc.train.quantize.prepare_qat`) with a fresh AdamW that follows the same
    schedule; ``model`` then keeps the float weights it had at the switch, and the trained network
    is ``result.qat_model`` (observers frozen, eval mode: convert it with
    :func:`~nas_asc.train.quantize.convert_qat`). Otherwise ``model`` is trained in place. Both
    end in eval mode.

    Args:
        model: the student.
        train_set: training features (``x``, ``y``, ``rows``).
        config: the recipe.
        teacher_logits: ensemble logits indexed by meta.csv row, or None for no distillation.
        seed: seeds shuffling, augmentation and the DML peers' initialisation.
        on_epoch: optional callback ``(epoch, record, network)`` after each epoch, given the
            network being trained (the fake-quant one during QAT, its observers frozen during the
            call so that evaluating it does not move its ranges); it may raise (e.g.
            ``optuna.TrialPruned``) to stop training.
        simulated: :class:`~nas_asc.data.devicesim.SimulatedDevices` of ``train_set``, required
            when ``config.devicesim_p > 0``.
        on_step: optional callback ``(epoch, step, steps)`` after each optimizer step (both
            1-based counts within the epoch), for progress inside long epochs.
        runtime: device, threads, layout and compile (:class:`~nas_asc.train.accel.AccelOptions`);
            None: its defaults (the CPU, the trial's thread share, eager).

    The run takes place on ``runtime.device``:
    the networks, the features (float16 log-mels, normalized per batch), teacher logits and
    simulated devices go there once, batches are drawn and augmented there, and the networks
    come back to the CPU at the end. Every random draw is made on the CPU, so a run sees the
    same batches and augmentation on any device.

    Raises:
        TrainingDiverged: if the loss becomes NaN or infinite.
        ValueError: teacher logits missing for training clips, or simulated devices missing or
            not matching ``train_set``.
    """
    stages = kd_stages(config)
    n = len(train_set)
    teacher = _gather_teacher(train_set, teacher_logits, stages)
    sim = _check_simulated(simulated, train_set, config)
    peers = _make_peers(model, config.dml_peers, seed) if any(s.peers for s in stages) else []
    # device, threads, memory layout and compilation for this run (nas_asc.train.accel); the
    # device and layout are applied to every network before its optimizer is built
    session = accel.prepare_for_training(
        model,
        train_set.batch(slice(0, config.batch_size)),
        planned_samples=n * config.epochs,
        options=runtime,
    )
    fused = session.options.fused_optimizer
    for peer in peers:
        session.adopt(peer)
    device = session.device
    run = _Run(
        config=config,
        train_set=on_device(train_set, device),
        teacher=None if teacher is None else teacher.to(device),
        sim=None if sim is None else _SimOnDevice(on_device_tensor(sim.x, device), sim.available),
        gen=torch.Generator().manual_seed(seed),  # on the CPU whatever the device: same draws
        session=session,
        model=model,
        peers=peers,
        optimizers=[_adamw([model], config, fused)]
        + ([_adamw(peers, config, fused)] if peers else []),
        forward={id(net): session.forward(net) for net in (model, *peers)},
    )
    result = TrainResult(seconds=0.0)
    start = time.perf_counter()
    run.on_step = on_step
    try:
        for stage in stages:
            for _ in range(stage.epochs):
                if run.epoch == config.qat_start:
                    result.qat_model = run.start_qat()
                record = run.train_epoch(stage, qat=result.qat_model is not None)
                result.history.append(record)
                session.epoch_end()
                if on_epoch is not None:
                    _call_on_epoch(on_epoch, record["epoch"], record, run.model, record["qat"])
    finally:
        session.finish(model, *peers, result.qat_model)
    result.seconds = time.perf_counter() - start
    result.accel = {**session.summary(), "amp": config.amp}
    model.eval()
    if result.qat_model is not None:
        _set_observers(result.qat_model, False)  # evaluating it must not move its int8 ranges
        result.qat_model.eval()
    return result


@dataclass
class _Run:
    """The state of one training run: networks, optimizers, random stream, position."""

    config: TrainConfig
    train_set: Any
    teacher: torch.Tensor | None  # teacher logits of the training clips, or None
    sim: Any  # SimulatedDevices, or None
    gen: torch.Generator  # every random draw: batch order and augmentation
    session: accel.TrainingAccel
    model: nn.Module  # the student being trained (the fake-quant copy once QAT starts)
    peers: list[nn.Module]  # DML peers
    optimizers: list[torch.optim.Optimizer]  # [student's, peers' (if any)]
    forward: dict[int, Callable]  # id(network) -> what to call (itself or its compiled view)
    epoch: int = 0
    step: int = 0
    on_step: Callable[[int, int, int], None] | None = None  # (epoch, step, steps) callback

    def __post_init__(self) -> None:
        n, batch = len(self.train_set), self.config.batch_size
        self.steps_per_epoch = math.ceil(n / batch)
        self.lr_factor = _lr_lambda(
            self.steps_per_epoch * self.config.epochs,
            self.steps_per_epoch * self.config.warmup_epochs,
        )
        self.device = self.train_set.device
        self.cuda = self.device.type == "cuda"
        amp = self.config.amp
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        # fp16 needs its loss scaled so that small gradients do not flush to zero
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None

    qat_step: int | None = None  # step at which QAT began after float training

    def _qat_ramp(self) -> float:
        """Warm-up factor of the fresh optimizer after the switch to QAT (1 outside it).

        Adam's first steps move every parameter by about the full learning rate (its moment
        estimates start empty), a shock to a network that is already trained; a warm restart is
        the usual remedy. Measured effect, modest: on the embedded dataset (TF-SepNet C=24, QAT
        for the last of 4 epochs, 3 seeds) int8 accuracy 41.9/34.0/40.6 % without, 43.1/33.6/
        40.6 % with; on the toy problem of the tests on one thread 81 % without, 94 % with.
        """
        if self.qat_step is None or not self.config.qat_warmup_epochs:
            return 1.0
        ramp = max(1, round(self.config.qat_warmup_epochs * self.steps_per_epoch))
        return min(1.0, (self.step - self.qat_step + 1) / ramp)

    def start_qat(self) -> nn.Module:
        """Switch the student to a fake-quantized copy with a fresh optimizer; return it."""
        # a network trained in float gets a warm-up; one that is quantized from the start has
        # the run's own warm-up
        self.qat_step = self.step if self.step else None
        self.model = self.session.adopt(_start_qat(self.model, self.train_set))
        # moments of the float weights do not carry over to the new parameters
        self.optimizers[0] = _adamw([self.model], self.config, self.session.options.fused_optimizer)
        self.forward[id(self.model)] = self.session.forward(self.model)
        return self.model

    def train_epoch(self, stage: Stage, qat: bool) -> dict:
        """One pass over the training split in ``stage``; returns the epoch's record."""
        config, data = self.config, self.train_set
        networks = [self.model, *self.peers] if stage.peers else [self.model]
        active = self.optimizers if stage.peers else self.optimizers[:1]
        for net in networks:
            net.train()  # a callback may have evaluated it
        n = len(data)
        perm = torch.randperm(n, generator=self.gen)
        # summed on the device and read once per epoch: no host synchronisation per step
        # (float64, so the sums are the ones a Python float would give)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for b in range(self.steps_per_epoch):
            idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            rows = idx.to(self.device, non_blocking=True) if self.cuda else idx
            x, y = data.batch(rows), data.y[rows]
            if self.sim is not None:
                x = device_swap(
                    x, idx, self.sim.x, self.sim.available, config.devicesim_p, self.gen
                )
            x, mix_perm, lam = mixup(x, config.mixup_alpha, config.mixup_p, self.gen)
            x = freq_mixstyle(x, config.mixstyle_alpha, config.mixstyle_p, self.gen)
            x = spec_augment(x, config.freq_mask, config.time_mask, config.specaugment_p, self.gen)
            x = self.session.input(x)
            with self._autocast():
                logits = [self.forward[id(net)](x) for net in networks]
            logits = [out.float() for out in logits]
            t = None if self.teacher is None else self.teacher[rows]
            losses = _stage_losses(stage, logits, y, t, (mix_perm, lam), config)
            # each loss only reaches its own network (others' outputs are detached targets)
            total = torch.stack(losses).sum() if len(losses) > 1 else losses[0]
            if self.cuda:
                finite &= torch.isfinite(total.detach())
            elif not torch.isfinite(total):
                raise TrainingDiverged(
                    f"loss became {total.item()} at epoch {self.epoch} ({stage.name} stage), "
                    f"step {b}"
                )
            lr = config.lr * self.lr_factor(self.step) * self._qat_ramp()
            for opt in active:
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
            self._backward_and_step(total, active)
            self.step += 1
            loss_sum += losses[0].detach().double() * len(idx)
            correct += (logits[0].detach().argmax(1) == y).sum()
            if self.on_step is not None:
                self.on_step(self.epoch, b + 1, self.steps_per_epoch)
        if not bool(finite):
            raise TrainingDiverged(
                f"loss became non-finite in epoch {self.epoch} ({stage.name} stage)"
            )
        record = {
            "epoch": self.epoch,
            "stage": stage.name,
            "qat": qat,
            "loss": float(loss_sum) / n,
            "train_accuracy": int(correct) / n,
        }
        self.epoch += 1
        return record

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _backward_and_step(self, total: torch.Tensor, active: list[torch.optim.Optimizer]):
        if self.scaler is None:
            total.backward()
            for opt in active:
                opt.step()
            return
        self.scaler.scale(total).backward()
        for opt in active:
            self.scaler.step(opt)
        self.scaler.update()


@dataclass
class _SimOnDevice:
    """Simulated device copies as the loop uses them: ``x`` on the training device,
    ``available`` on the CPU (it is indexed with the CPU-drawn batch rows)."""

    x: torch.Tensor
    available: torch.Tensor


# sets and tensors moved to a GPU, kept for the process's next trials: (id, device) -> copy
_ON_DEVICE: dict[tuple[int, str], tuple[weakref.ref, Any]] = {}


def _kept_on_device(source, device: torch.device, move: Callable[[], Any]):
    """``move()``'s result for ``source`` on ``device``, made once per process and kept while
    ``source`` lives (copies of sources that are gone are dropped, freeing their memory)."""
    key = (id(source), str(device))
    hit = _ON_DEVICE.get(key)
    if hit is not None and hit[0]() is source:
        return hit[1]
    for k in [k for k, (ref, _) in _ON_DEVICE.items() if ref() is None]:
        del _ON_DEVICE[k]
    moved = move()
    _ON_DEVICE[key] = (weakref.ref(source), moved)
    return moved


def on_device_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, moved once per process (a tensor already there is returned)."""
    if t.device == device:
        return t
    return _kept_on_device(t, device, lambda: t.to(device))


def on_device(features, device: torch.device):
    """A :class:`~nas_asc.data.features.FeatureSet` on ``device``, moved once per process
    (:meth:`~nas_asc.data.features.FeatureSet.to`: its float16 log-mels, normalized per batch
    there); a set already there is returned."""
    if features.device == device:
        return features
    return _kept_on_device(features, device, lambda: features.to(device))


def _call_on_epoch(on_epoch, epoch: int, record: dict, model: nn.Module, qat: bool) -> None:
    if not qat:
        on_epoch(epoch, record, model)
        return
    _set_observers(model, False)
    try:
        on_epoch(epoch, record, model)
    finally:
        _set_observers(model, True)


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (a tensor of inputs or a FeatureSet), in eval mode, on the
    CPU; batches go to the model's device."""
    model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    read = x.batch if hasattr(x, "batch") else x.__getitem__
    out = [
        model(read(slice(i, i + batch_size)).to(device)).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def evaluate(model: nn.Module, eval_set, n_classes: int = 10) -> EvalResult:
    """Top-1 accuracy, log loss and per-device accuracy of ``model`` on ``eval_set``."""
    from nas_asc.data.tau22 import SEEN_DEVICES, UNSEEN_DEVICES

    logits = predict(model, eval_set).float()
    y = eval_set.y
    pred = logits.argmax(1)
    hit = (pred == y).numpy()
    devices = np.asarray(eval_set.devices)
    by_device = {d: float(hit[devices == d].mean()) for d in sorted(set(eval_set.devices))}
    seen = [by_device[d] for d in SEEN_DEVICES if d in by_device]
    unseen = [by_device[d] for d in UNSEEN_DEVICES if d in by_device]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
    return EvalResult(
        accuracy=float(hit.mean()),
        log_loss=float(F.cross_entropy(logits, y)),
        accuracy_by_device=by_device,
        seen_accuracy=float(np.mean(seen)) if seen else float("nan"),
        unseen_accuracy=float(np.mean(unseen)) if unseen else None,
        confusion=confusion,
        logits=logits,
    )
