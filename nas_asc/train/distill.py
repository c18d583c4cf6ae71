"""Knowledge distillation losses and strategies (a registry of multi-stage recipes).

* ``hinton``: Hinton et al., "Distilling the knowledge in a neural network" (2015), as used by the
  seed reports (shared/seeds/000, 003, 004): KL divergence between temperature-softened teacher and
  student distributions, scaled by T^2 so that its gradients keep their magnitude as T changes.
* ``rrs``: Relational Response Stagewise KD of the AI4EDGE report (shared/seeds/001, Sec. 4.3):
  first relational KD (Park et al., "Relational knowledge distillation", CVPR 2019: distance-wise
  and angle-wise potentials), then response (Hinton) KD. Our teacher is a table of cached ensemble
  logits, so the relations are taken between the logits, "the teacher's output" of the report.
* ``dml``: deep mutual learning then KD fine-tuning (shared/seeds/004, Sec. 3.1 and 3.4; Zhang et
  al., "Deep mutual learning", CVPR 2018): the student and peer networks learn together, each from
  the labels and from the others' softened outputs; then the student alone is fine-tuned from the
  teacher. The report's peers are a wider and a deeper BC-Res2Net; a search candidate has no
  natural wider/deeper sibling, so the peers here are copies of the student's architecture
  re-initialised with other seeds (made by the training loop), which keeps DML applicable to every
  family. The cached teacher logits, when given, take part as a fixed participant (the report's
  pre-trained ResNet38 also learns; ours is cached and cannot).

Two weightings of the response term: ``convex``, ``(1 - lambda) * CE + lambda * T^2 * KL`` with
lambda in [0, 1]; ``additive``, ``CE + lambda * T^2 * KL`` with lambda >= 0 (the reports' lambda =
20, 50, 250 form).

A strategy is a list of :class:`Stage`; each stage names its loss, which maps the logits of the
networks being trained to one loss per network. Strategies register by name like the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nas_asc._registry import Registry

__all__ = [
    "KD_WEIGHTINGS",
    "Stage",
    "kd_loss",
    "distillation_objective",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "relational_objective",
    "mutual_objectives",
    "register_kd_strategy",
    "list_kd_strategies",
    "kd_stages",
    "KD_STRATEGIES",
]

KD_WEIGHTINGS = ("convex", "additive")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    if temperature <= 0:
        raise ValueError(f"KD temperature T must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_objective(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    weight: float,
    weighting: str = "convex",
) -> torch.Tensor:
    """Hinton KD: CE plus the temperature-scaled KL to the teacher, weighted by ``weighting``.

    ``convex``: ``(1 - weight) * CE + weight * kd_loss``, weight in [0, 1]; ``additive``:
    ``CE + weight * kd_loss``, weight >= 0. With ``teacher_logits=None`` or ``weight=0`` this is
    plain cross-entropy.
    """
    if weighting not in KD_WEIGHTINGS:
        known = ", ".join(KD_WEIGHTINGS)
        raise ValueError(f"unknown KD weighting {weighting!r}; use one of {known}")
    if weighting == "convex" and not 0.0 <= weight <= 1.0:
        raise ValueError(
            f"KD weight lambda must be in [0, 1] with convex weighting, got {weight}; "
            "use additive weighting for larger weights"
        )
    if weighting == "additive" and not weight >= 0.0:
        raise ValueError(f"KD weight lambda must be >= 0 with additive weighting, got {weight}")
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or weight == 0.0:
        return ce
    kd = kd_loss(student_logits, teacher_logits, temperature)
    ce_weight = 1.0 - weight if weighting == "convex" else 1.0
    return ce_weight * ce + weight * kd


def _normalised_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances over their mean over distinct pairs (Park et al., Eq. 5)."""
    # the clamp keeps sqrt differentiable where two outputs coincide (the diagonal and ties)
    squared = (z.unsqueeze(0) - z.unsqueeze(1)).pow(2).sum(-1)
    off_diagonal = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    d = squared.clamp_min(1e-12).sqrt() * off_diagonal
    positive = d > 1e-6
    mean = d[positive].mean() if positive.any() else d.new_tensor(1.0)
    return d / mean


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distance-wise relational KD: smooth-L1 between the two batches' normalised distances.

    Distances are divided by their batch mean, so the loss is invariant to scaling either output
    (only the shape of the relations is transferred, not the logit magnitude).

    Args:
        student: ``(batch, dim)`` student outputs.
        teacher: ``(batch, dim)`` teacher outputs (no gradient flows into them).
    """
    with torch.no_grad():
        target = _normalised_distances(teacher.float())
    return F.smooth_l1_loss(_normalised_distances(student), target)


def _angles(z: torch.Tensor) -> torch.Tensor:
    """``(n, n, n)`` cosines of the angle at vertex ``i`` between ``z_j`` and ``z_k`` (Eq. 7)."""
    e = F.normalize(z.unsqueeze(0) - z.unsqueeze(1), p=2, dim=2)  # e[i, j] = unit(z_j - z_i)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Angle-wise relational KD: smooth-L1 between the cosines of all triplets' angles.

    Args:
        student: ``(batch, dim)`` student outputs.
        teacher: ``(batch, dim)`` teacher outputs (no gradient flows into them).
    """
    with torch.no_grad():
        target = _angles(teacher.float())
    return F.smooth_l1_loss(_angles(student), target)


def relational_objective(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    distance_weight: float,
    angle_weight: float,
) -> torch.Tensor:
    """RRS stage 1: ``CE + distance_weight * L_D + angle_weight * L_A``; CE without a teacher."""
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None:
        return ce
    loss = ce
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student_logits, teacher_logits)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student_logits, teacher_logits)
    return loss


def mutual_objectives(
    logits: list[torch.Tensor],
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    temperature: float,
    weight: float,
) -> list[torch.Tensor]:
    """Deep mutual learning: one loss per network, ``CE + weight * mean KD to the others``.

    Network ``n`` learns from the softened outputs (temperature ``T``, scaled by ``T^2`` like
    :func:`kd_loss`) of every other network and of the fixed teacher when given; the others'
    outputs are detached, so each loss only moves its own network and one backward pass over the
    sum updates all of them as separate optimisations would.

    Args:
        logits: ``[student, peer 1, ...]`` logits on the same batch.
        labels: scene labels.
        teacher_logits: cached teacher logits for the batch, or None.
        temperature: softening temperature T, > 0.
        weight: ``lambda_dml`` of report 004 Eq. 5, >= 0.
    """
    if weight < 0:
        raise ValueError(f"DML weight lambda must be >= 0, got {weight}")
    targets = [z.detach() for z in logits]
    losses = []
    for n, z in enumerate(logits):
        others = [t for m, t in enumerate(targets) if m != n]
        if teacher_logits is not None:
            others.append(teacher_logits)
        loss = F.cross_entropy(z, labels)
        if others and weight:
            soft = torch.stack([kd_loss(z, t, temperature) for t in others]).mean()
            loss = loss + weight * soft
        losses.append(loss)
    return losses


# --------------------------------------------------------------------------------------------
# Strategies: named lists of stages
# --------------------------------------------------------------------------------------------

# (logits of the networks trained, labels, teacher logits or None, training config) -> one loss
# per network; the config is duck-typed (nas_asc.train.loop.TrainConfig) to avoid an import cycle
StageLoss = Callable[[list[torch.Tensor], torch.Tensor, "torch.Tensor | None", Any], list]


@dataclass(frozen=True)
class Stage:
    """One stage of a KD strategy."""

    name: str  # recorded in the training history: "response", "relational", "mutual"
    epochs: int  # epochs spent in this stage
    loss: StageLoss  # one loss per network trained in this stage
    uses_teacher: bool  # whether the loss reads the teacher logits (else they are not gathered)
    peers: bool = False  # trains config.dml_peers peer networks alongside the student


# name -> fn(config) -> list[Stage]
KD_STRATEGIES: Registry[Callable[[Any], list[Stage]]] = Registry("KD strategy")


def register_kd_strategy(name: str) -> Callable:
    """Register ``fn(config) -> list[Stage]`` as KD strategy ``name`` (duplicates refused)."""
    return KD_STRATEGIES.register(name)


def list_kd_strategies() -> list[str]:
    """Names of the registered KD strategies, sorted."""
    return KD_STRATEGIES.names()


def kd_stages(config) -> list[Stage]:
    """The non-empty stages of ``config.kd_strategy`` for a run of ``config.epochs`` epochs."""
    return [s for s in KD_STRATEGIES.get(config.kd_strategy)(config) if s.epochs > 0]


def _stage1_epochs(config) -> int:
    # floor, so that a one-epoch run (e.g. fine-tuning after pruning) goes straight to the final
    # KD stage; the epsilon absorbs float error such as 0.29 * 100 = 28.999...
    return min(config.epochs, math.floor(config.kd_stage1_fraction * config.epochs + 1e-9))


def _response(logits, labels, teacher, config) -> list[torch.Tensor]:
    return [
        distillation_objective(
            logits[0],
            labels,
            teacher,
            config.kd_temperature,
            config.kd_lambda,
            config.kd_weighting,
        )
    ]


def _response_stage(config, epochs: int) -> Stage:
    return Stage("response", epochs, _response, uses_teacher=config.kd_lambda > 0)


def _relational(logits, labels, teacher, config) -> list[torch.Tensor]:
    return [relational_objective(logits[0], labels, teacher, config.rkd_distance, config.rkd_angle)]


def _mutual(logits, labels, teacher, config) -> list[torch.Tensor]:
    return mutual_objectives(logits, labels, teacher, config.kd_temperature, config.dml_lambda)


@register_kd_strategy("hinton")
def _hinton(config) -> list[Stage]:
    return [_response_stage(config, config.epochs)]


@register_kd_strategy("rrs")
def _rrs(config) -> list[Stage]:
    first = _stage1_epochs(config)
    relational = config.rkd_distance > 0 or config.rkd_angle > 0
    return [
        Stage("relational", first, _relational, uses_teacher=relational),
        _response_stage(config, config.epochs - first),
    ]


@register_kd_strategy("dml")
def _dml(config) -> list[Stage]:
    first = _stage1_epochs(config)
    return [
        Stage("mutual", first, _mutual, uses_teacher=True, peers=True),
        _response_stage(config, config.epochs - first),
    ]
