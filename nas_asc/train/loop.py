"""Training and evaluation of one candidate on in-memory features.

The recipe follows the seed reports (shared/seeds/003 Sec. 4, 000, 004): Adam(W) with a linear
warm-up and cosine decay, Freq-MixStyle on the input features, and knowledge distillation from
cached teacher-ensemble logits. Features are one tensor in memory and batches are taken by
indexing it, with no per-sample Python work.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nas_asc.train.augment import freq_mixstyle
from nas_asc.train.distill import distillation_objective

__all__ = ["TrainConfig", "TrainResult", "EvalResult", "TrainingDiverged", "train", "evaluate"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8  # passes over the training split
    batch_size: int = 64  # clips per optimizer step
    lr: float = 1e-2  # peak learning rate (AdamW), after linear warm-up
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_epochs: int = 1  # linear warm-up from 0 to lr, then cosine decay to 0
    mixstyle_alpha: float = 0.3  # Freq-MixStyle Beta(alpha, alpha) mixing coefficient
    mixstyle_p: float = 0.4  # probability that a batch is Freq-MixStyled
    kd_temperature: float = 2.0  # distillation temperature T
    kd_lambda: float = 0.5  # loss = (1 - lambda) * CE + lambda * T^2 * KL(teacher || student)
    calibration_batches: int = 8  # batches of training data used to calibrate int8 PTQ
    prune: bool = False  # over budget: train, prune lowest-L1 filters until it fits, fine-tune
    prune_finetune_epochs: int = 1  # fine-tuning epochs after pruning
    prune_min_filters: int = 4  # no pruned layer keeps fewer filters than this

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.epochs, int) and self.epochs >= 1, "epochs must be an integer >= 1"),
            (isinstance(self.batch_size, int) and self.batch_size >= 2, "batch_size must be >= 2"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (self.mixstyle_alpha > 0, "mixstyle_alpha must be > 0"),
            (0.0 <= self.mixstyle_p <= 1.0, "mixstyle_p must be in [0, 1]"),
            (self.kd_temperature > 0, "kd_temperature must be > 0"),
            (0.0 <= self.kd_lambda <= 1.0, "kd_lambda must be in [0, 1]"),
            (self.calibration_batches >= 1, "calibration_batches must be >= 1"),
            (
                isinstance(self.prune_finetune_epochs, int) and self.prune_finetune_epochs >= 0,
                "prune_finetune_epochs must be an integer >= 0",
            ),
            (
                isinstance(self.prune_min_filters, int) and self.prune_min_filters >= 1,
                "prune_min_filters must be an integer >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"train config: {message}, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    seconds: float  # wall time of the training loop
    history: list[dict] = field(default_factory=list)  # per epoch: loss, train accuracy


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


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(
    model: nn.Module,
    train_set,
    config: TrainConfig,
    teacher_logits: torch.Tensor | None = None,
    seed: int = 0,
    on_epoch=None,
) -> TrainResult:
    """Train ``model`` in place on a :class:`~nas_asc.data.features.FeatureSet`.

    Args:
        model: the student.
        train_set: training features (``x``, ``y``, ``rows``).
        config: the recipe.
        teacher_logits: ensemble logits indexed by meta.csv row, or None for no distillation.
        seed: seeds shuffling and augmentation.
        on_epoch: optional callback ``(epoch, record)`` after each epoch.

    Raises:
        TrainingDiverged: if the loss becomes NaN or infinite.
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(train_set)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total, steps_per_epoch * config.warmup_epochs)
    )
    teacher = None
    if teacher_logits is not None and config.kd_lambda > 0:
        teacher = teacher_logits[train_set.rows]
        if not torch.isfinite(teacher).all():
            raise ValueError("teacher logits are missing (NaN) for some training clips")
    result = TrainResult(seconds=0.0)
    start = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = freq_mixstyle(train_set.x[idx], config.mixstyle_alpha, config.mixstyle_p, gen)
            y = train_set.y[idx]
            logits = model(x)
            loss = distillation_objective(
                logits,
                y,
                None if teacher is None else teacher[idx],
                config.kd_temperature,
                config.kd_lambda,
            )
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}, step {b}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        record = {"epoch": epoch, "loss": loss_sum / n, "train_accuracy": correct / n}
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on inputs ``x``, in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(model: nn.Module, eval_set, n_classes: int = 10) -> EvalResult:
    """Top-1 accuracy, log loss and per-device accuracy of ``model`` on ``eval_set``."""
    from nas_asc.data.tau22 import SEEN_DEVICES, UNSEEN_DEVICES

    logits = predict(model, eval_set.x).float()
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
