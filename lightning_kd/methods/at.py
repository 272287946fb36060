"""Attention Transfer.

Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017. https://arxiv.org/abs/1612.03928
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.features import check_4d, layer_names, paired_layers
from lightning_kd.losses import at_loss


class AT(DistillationModule):
    """Attention transfer: ``ce_weight * CE(s, y) + at_weight * sum_pairs at_loss(s_i, t_i, p)``.

    "Paying More Attention to Attention" (Zagoruyko & Komodakis, ICLR 2017),
    https://arxiv.org/abs/1612.03928. Defaults are the CIFAR-100 benchmark recipe of
    RepDistiller/CRD: all stage outputs, p=2, weight 1000, CE weight 1.

    Args:
        student_layers: dotted names of the student layers (default: ``student.stage_names``).
        teacher_layers: the teacher layers paired with them, same length (default:
            ``teacher.stage_names``).
        p: exponent of the attention map.
        at_weight: weight of the summed attention losses.
        ce_weight: weight of the cross-entropy with the labels.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, student_layers: Optional[list[str]] = None, teacher_layers: Optional[list[str]] = None,
                 p: float = 2, at_weight: float = 1000.0, ce_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.student_layers = layer_names(self.student, student_layers, "student_layers")
        self.teacher_layers = layer_names(self.teacher.net, teacher_layers, "teacher_layers")
        paired_layers(self.student_layers, self.teacher_layers, "AT")
        if not p > 0:
            raise ValueError(f"p must be > 0, got {p}; the paper uses p=2.")
        self.p = p
        student_features, teacher_features = self.watch_layers(self.student_layers, self.teacher_layers)
        check_4d(student_features, "student")
        check_4d(teacher_features, "teacher")
        self.loss_weights = {"ce": ce_weight, "at": at_weight}

    def distill_losses(self, student, teacher, batch):
        pairs = zip(self.student_layers, self.teacher_layers)
        at = sum(at_loss(student.features[s], teacher.features[t], self.p) for s, t in pairs)
        return {"ce": F.cross_entropy(student.logits, batch.y), "at": at}
