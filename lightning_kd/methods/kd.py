"""Hinton knowledge distillation.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", NIPS workshop 2014.
https://arxiv.org/abs/1503.02531
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.base import DistillationModule


def check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; the KD recipe uses 4.0.")
    return float(temperature)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over the batch.

    The ``T^2`` factor keeps the gradient scale independent of ``T`` (Hinton et al., sec. 2).
    Computed in float32 whatever the autocast dtype.
    """
    T = check_temperature(temperature)
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (T * T)


class KD(DistillationModule):
    """Hinton KD: ``ce_weight * CE(s, y) + kd_weight * kd_loss(s, t, T)``.

    "Distilling the Knowledge in a Neural Network" (Hinton et al., 2015),
    https://arxiv.org/abs/1503.02531. Defaults are the CIFAR-100 benchmark recipe of
    RepDistiller/CRD: T=4, ce 0.1, kd 0.9.

    Args:
        temperature: softening temperature T > 0.
        ce_weight: weight of the cross-entropy with the labels.
        kd_weight: weight of the distillation term.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature)
        self.loss_weights = {"ce": ce_weight, "kd": kd_weight}

    def distill_losses(self, batch):
        x, y = batch
        t_logits = self.teacher_forward(x)
        s_logits = self.student(x)
        return s_logits, {"ce": F.cross_entropy(s_logits, y),
                          "kd": kd_loss(s_logits, t_logits, self.temperature)}
