"""Decoupled Knowledge Distillation.

Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation", CVPR 2022.
https://arxiv.org/abs/2203.08679
"""
from __future__ import annotations

import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.losses import check_temperature, check_term_weights, dkd_loss, standardized_if
from lightning_kd.schedules import check_warmup


class DKD(DistillationModule):
    """DKD: ``ce_weight * CE(s, y) + w(epoch) * (alpha * TCKD + beta * NCKD)`` at temperature T.

    "Decoupled Knowledge Distillation" (Zhao et al., CVPR 2022), https://arxiv.org/abs/2203.08679.
    The defaults are the authors' CIFAR-100 ones (mdistiller): alpha 1, beta 8, T 4, CE 1, and the
    distillation term's weight ``w`` ramped linearly over the first 20 of 240 epochs (``warmup``
    1/12 of the run, logged as ``train/scale/dkd``; see :func:`~lightning_kd.schedules.warmup_scale`).
    The authors use beta 6 for the pairs into wrn_16_2, wrn_40_1, vgg8 and (from vgg13) MobileNetV2,
    and beta 2 for resnet56 -> resnet20 and resnet110 -> resnet32 (mdistiller's
    ``configs/cifar100/dkd``).

    Args:
        alpha: weight of the target-class term TCKD.
        beta: weight of the non-target-class term NCKD.
        temperature: softening temperature T > 0.
        ce_weight: weight of the cross-entropy with the labels.
        warmup: the fraction of the run over which the DKD term's weight ramps up, in [0, 1)
            (0: none); computed per epoch from ``trainer.max_epochs``.
        logit_standardization: z-score both networks' logits per sample before the temperature
            (Sun et al., CVPR 2024, https://arxiv.org/abs/2403.01427). Off by default (plain DKD);
            the LS authors' CIFAR-100 DKD setting is T 2 with alpha and beta times 9 (9 and 72).
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, ce_weight: float = 1.0,
                 warmup: float = 1 / 12, logit_standardization: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.beta = check_term_weights("DKD", "1 and 8", alpha=alpha, beta=beta)
        self.temperature = check_temperature(temperature)
        self.logit_standardization = logit_standardization
        self.loss_weights = {"ce": ce_weight, "dkd": 1.0}
        self.weight_warmup = {"dkd": check_warmup(warmup, "DKD warmup")}

    def distill_losses(self, student, teacher, batch):
        s, t = standardized_if(self.logit_standardization, student.logits, teacher.logits)
        return {"ce": F.cross_entropy(student.logits, batch.y),
                "dkd": dkd_loss(s, t, batch.y, self.alpha, self.beta, self.temperature)}
