"""The relations of RKD over a batch, shared by :class:`~lightning_kd.methods.RKD` (classification) and
:class:`~lightning_kd.methods.MetricRKD` (metric learning): the distance and angle terms over the
process's batch or the global one, and the check that a batch holds enough samples for angles.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019. https://arxiv.org/abs/1904.05068
"""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
from torch import Tensor

from lightning_kd.distributed import gather_with_grads
from lightning_kd.losses import rkd_angle_loss, rkd_distance_loss


def relation_losses(module: pl.LightningModule, student: Tensor, teacher: Tensor,
                    global_relations: bool, normalizer: str = "all_entries") -> dict[str, Tensor]:
    """The RKD terms that ``module.loss_weights`` names (``rkd_distance``, ``rkd_angle``), over the
    global batch when ``global_relations``, averaged as ``normalizer`` says (see the losses)."""
    if global_relations:
        student, teacher = gather_with_grads(module, student), gather_with_grads(module, teacher)
    losses = {}
    if "rkd_distance" in module.loss_weights:
        losses["rkd_distance"] = rkd_distance_loss(student, teacher, normalizer)
    if "rkd_angle" in module.loss_weights:
        losses["rkd_angle"] = rkd_angle_loss(student, teacher, normalizer)
    return losses


def check_angle_batch_size(module: pl.LightningModule, global_relations: bool) -> None:
    """Refuse, before training, a datamodule ``batch_size`` too small for the angle loss."""
    batch_size: Optional[int] = getattr(module.trainer.datamodule, "batch_size", None)
    if batch_size is None or "rkd_angle" not in module.loss_weights:
        return
    relations = batch_size * (module.trainer.world_size if global_relations else 1)
    if relations < 3:
        raise ValueError(f"RKD angle loss needs at least 3 samples per relation batch, but the batch size is "
                         f"{batch_size}{' (global)' if global_relations else ' per process'}; increase "
                         f"data.init_args.batch_size or set angle_weight: 0.")
