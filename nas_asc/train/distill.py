"""Knowledge distillation losses.

Hinton et al., "Distilling the knowledge in a neural network" (2015), as used by the seed reports
(shared/seeds/000, 003, 004): KL divergence between temperature-softened teacher and student
distributions, scaled by T^2 so that its gradients keep their magnitude as T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "distillation_objective"]


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
) -> torch.Tensor:
    """``(1 - weight) * CE(student, labels) + weight * kd_loss(student, teacher, T)``.

    With ``teacher_logits=None`` or ``weight=0`` this is plain cross-entropy.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"KD weight lambda must be in [0, 1], got {weight}")
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or weight == 0.0:
        return ce
    return (1.0 - weight) * ce + weight * kd_loss(student_logits, teacher_logits, temperature)
