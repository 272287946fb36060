"""DIST: distillation from a stronger teacher by correlation of predictions.

Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
https://arxiv.org/abs/2205.10536
"""
from __future__ import annotations

import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.losses import check_temperature, check_term_weights, dist_loss, standardized_if


class DIST(DistillationModule):
    """DIST: ``ce_weight * CE(s, y) + dist_weight * T^2 * (beta * inter + gamma * intra)``.

    "Knowledge Distillation from A Stronger Teacher" (Huang et al., NeurIPS 2022),
    https://arxiv.org/abs/2205.10536: inter- and intra-class Pearson relations of the softened
    predictions (:func:`~lightning_kd.losses.dist_loss`). The defaults are the authors' CIFAR-100
    recipe (hunto/image_classification_sota ``configs/strategies/distill/dist_cifar.yaml``: ``kd:
    dist_t4``, ``ori_loss_weight: 1``, ``kd_loss_weight: 2``): beta 1, gamma 1, T 4, CE 1, DIST 2.
    Under DDP the intra-class relation (a class's correlation over the batch) is taken over each
    process's own batch, as in the authors' distributed training, so it is not the one-process value
    on the global batch.

    Args:
        beta: weight of the inter-class relation (per sample, over its classes).
        gamma: weight of the intra-class relation (per class, over the batch).
        temperature: softening temperature T > 0.
        ce_weight: weight of the cross-entropy with the labels.
        dist_weight: weight of the DIST term.
        logit_standardization: z-score both networks' logits per sample before the temperature
            (Sun et al., CVPR 2024, https://arxiv.org/abs/2403.01427). Off by default (plain DIST);
            the LS authors publish no DIST setting.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0, ce_weight: float = 1.0,
                 dist_weight: float = 2.0, logit_standardization: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.beta, self.gamma = check_term_weights("DIST", "1 and 1", beta=beta, gamma=gamma)
        self.temperature = check_temperature(temperature)
        self.logit_standardization = logit_standardization
        self.loss_weights = {"ce": ce_weight, "dist": dist_weight}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        if stage == "fit" and batch_size is not None and batch_size < 2:
            raise ValueError(f"DIST correlates each class's predictions over the batch, which needs at least 2 "
                             f"samples, but the batch size is {batch_size}: increase data.init_args.batch_size.")

    def distill_losses(self, student, teacher, batch):
        s, t = standardized_if(self.logit_standardization, student.logits, teacher.logits)
        return {"ce": F.cross_entropy(student.logits, batch.y),
                "dist": dist_loss(s, t, self.beta, self.gamma, self.temperature)}
