"""Hinton knowledge distillation.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", NIPS workshop 2014.
https://arxiv.org/abs/1503.02531
"""
from __future__ import annotations

import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.losses import check_temperature, kd_loss, standardized_if


class KD(DistillationModule):
    """Hinton KD: ``ce_weight * CE(s, y) + kd_weight * kd_loss(s, t, T)``.

    "Distilling the Knowledge in a Neural Network" (Hinton et al., 2015),
    https://arxiv.org/abs/1503.02531. Defaults are the CIFAR-100 benchmark recipe of
    RepDistiller/CRD: T=4, ce 0.1, kd 0.9.

    Args:
        temperature: softening temperature T > 0.
        ce_weight: weight of the cross-entropy with the labels.
        kd_weight: weight of the distillation term.
        logit_standardization: z-score both networks' logits per sample before the temperature
            (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024,
            https://arxiv.org/abs/2403.01427). Off by default (Hinton KD); the LS authors' CIFAR-100
            setting is T 2 ("base temperature"), ce 0.1, kd 9 (``configs/cifar100/kdls_*.yaml``).
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9,
                 logit_standardization: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature)
        self.logit_standardization = logit_standardization
        self.loss_weights = {"ce": ce_weight, "kd": kd_weight}

    def distill_losses(self, student, teacher, batch):
        s, t = standardized_if(self.logit_standardization, student.logits, teacher.logits)
        return {"ce": F.cross_entropy(student.logits, batch.y),
                "kd": kd_loss(s, t, self.temperature)}
