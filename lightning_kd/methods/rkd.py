"""Relational Knowledge Distillation: distances and angles between the embeddings of a batch.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.
https://arxiv.org/abs/1904.05068
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.base import DistillationModule
from lightning_kd.features import FeatureHooks


def check_embeddings(student: Tensor, teacher: Tensor, min_batch: int, what: str) -> None:
    """Both ``(N, D)`` with the same ``N >= min_batch`` (their ``D`` may differ)."""
    if student.ndim != 2 or teacher.ndim != 2:
        raise ValueError(f"{what} needs (N, D) embeddings, got student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)}; flatten the features first (e.g. hook the `pool` layer).")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{what} needs the same samples on both sides, got {student.shape[0]} student and "
                         f"{teacher.shape[0]} teacher embeddings.")
    if student.shape[0] < min_batch:
        raise ValueError(f"{what} needs a batch of at least {min_batch} samples, got {student.shape[0]}; "
                         f"increase the batch size (data.init_args.batch_size).")


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """``(N, N)`` Euclidean distances from the Gram matrix (memory N^2, not N^2 * D).

    Squared distances are clamped at a tiny positive value before the square root, so equal
    embeddings (and the diagonal) give finite gradients.
    """
    squared_norms = embeddings.pow(2).sum(1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * embeddings @ embeddings.t()
    return squared.clamp_min(1e-12).sqrt()


def normalized_distances(embeddings: Tensor) -> Tensor:
    """Distances of the ``N (N - 1)`` ordered distinct pairs, divided by their mean (the paper's mu)."""
    n = embeddings.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    distances = pairwise_distances(embeddings)[off_diagonal]
    return distances / distances.mean().clamp_min(1e-12)


def triplet_cosines(embeddings: Tensor) -> Tensor:
    """``cos angle(e_i, e_j, e_k) = <unit(e_i - e_j), unit(e_k - e_j)>`` (vertex ``e_j``) for the
    ``N (N - 1) (N - 2)`` ordered triplets of distinct indices."""
    n = embeddings.shape[0]
    directions = F.normalize(embeddings[:, None, :] - embeddings[None, :, :], dim=2)  # [i, j] = unit(e_i - e_j)
    # cosines[j, i, k] = <unit(e_i - e_j), unit(e_k - e_j)>
    cosines = torch.bmm(directions.transpose(0, 1), directions.transpose(0, 1).transpose(1, 2))
    index = torch.arange(n, device=embeddings.device)
    distinct = (index[:, None, None] != index[None, :, None]) & (index[:, None, None] != index[None, None, :]) \
        & (index[None, :, None] != index[None, None, :])
    return cosines[distinct]


def relation_huber(relation, student: Tensor, teacher: Tensor) -> Tensor:
    """Huber (smooth L1, delta 1) between ``relation(student)`` and ``relation(teacher)``, the teacher
    side without autograd; in float32 whatever the autocast dtype."""
    with torch.no_grad():
        target = relation(teacher.detach().float())
    return F.smooth_l1_loss(relation(student.float()), target, beta=1.0)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance-wise loss: Huber (smooth L1, delta 1) between the student's and the teacher's
    pair distances, each normalized by its mean over distinct pairs; averaged over the
    ``N (N - 1)`` ordered distinct pairs. Scale-invariant in either embedding.

    Args:
        student: ``(N, D_s)`` student embeddings, ``N >= 2``.
        teacher: ``(N, D_t)`` teacher embeddings (no gradient flows to them).
    """
    check_embeddings(student, teacher, 2, "rkd_distance_loss")
    return relation_huber(normalized_distances, student, teacher)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle-wise loss: Huber (smooth L1, delta 1) between the cosines of the angles the
    student's and the teacher's embeddings form, averaged over the ``N (N - 1) (N - 2)`` ordered
    triplets of distinct samples.

    Args:
        student: ``(N, D_s)`` student embeddings, ``N >= 3`` (an angle needs three points).
        teacher: ``(N, D_t)`` teacher embeddings (no gradient flows to them).
    """
    check_embeddings(student, teacher, 3, "rkd_angle_loss")
    return relation_huber(triplet_cosines, student, teacher)


def gather_with_grads(module: DistillationModule, embeddings: Tensor) -> Tensor:
    """The embeddings of every process, concatenated in rank order; gradients flow back to each
    process's own rows (the backward of the gather sums the gradients of all processes)."""
    if not (dist.is_available() and dist.is_initialized()) or module.trainer.world_size == 1:
        return embeddings
    return module.all_gather(embeddings, sync_grads=True).flatten(0, 1)


def relation_losses(module: DistillationModule, student: Tensor, teacher: Tensor) -> dict[str, Tensor]:
    """The RKD terms that ``module.loss_weights`` names (``rkd_distance``, ``rkd_angle``), over the
    global batch when ``module.global_relations``."""
    if module.global_relations:
        student, teacher = gather_with_grads(module, student), gather_with_grads(module, teacher)
    losses = {}
    if "rkd_distance" in module.loss_weights:
        losses["rkd_distance"] = rkd_distance_loss(student, teacher)
    if "rkd_angle" in module.loss_weights:
        losses["rkd_angle"] = rkd_angle_loss(student, teacher)
    return losses


def check_angle_batch_size(module: DistillationModule, global_relations: bool) -> None:
    """Refuse, before training, a datamodule ``batch_size`` too small for the angle loss."""
    batch_size: Optional[int] = getattr(module.trainer.datamodule, "batch_size", None)
    if batch_size is None:
        return
    relations = batch_size * (module.trainer.world_size if global_relations else 1)
    if relations < 3:
        raise ValueError(f"RKD angle loss needs at least 3 samples per relation batch, but the batch size is "
                         f"{batch_size}{' (global)' if global_relations else ' per process'}; increase "
                         f"data.init_args.batch_size or set angle_weight: 0.")


class RKD(DistillationModule):
    """RKD: ``ce_weight * CE + distance_weight * L_dist + angle_weight * L_angle``.

    "Relational Knowledge Distillation" (Park et al., CVPR 2019), https://arxiv.org/abs/1904.05068.
    The relations are taken between the penultimate embeddings (the ``pool`` output of the zoo's
    networks) of the samples of a batch. Defaults are the CIFAR-100 recipe of RepDistiller/CRD:
    distance 25, angle 50, CE 1. The Huber terms are averaged over distinct pairs and triplets;
    the authors' code averages over all ``N^2`` (``N^3``) entries, whose degenerate ones add zero,
    i.e. the same loss times ``(N-1)/N`` (``(N-1)(N-2)/N^2``): 0.98 (0.95) at ``N = 64``.

    With ``global_relations`` under DDP, every process gathers the embeddings of all processes
    (with gradients) and computes the relations over the global batch, as one process would on
    the concatenated batch. No rescaling by the world size is needed: every process computes the
    same global loss ``L``; the gather's backward sums the gradients from all ``W`` processes, so a
    process's own embeddings receive ``W * dL/de``, and DDP's average over processes divides the
    ``W`` out again. The CE term stays per process, and DDP's average of the per-process means is
    the global-batch mean (equal batch sizes). ``tests/test_rkd.py`` checks both against one
    process on the concatenated batch.

    Args:
        distance_weight: weight of the distance-wise loss (0 leaves it out).
        angle_weight: weight of the angle-wise loss (0 leaves it out).
        ce_weight: weight of the cross-entropy with the labels.
        student_layer: dotted name of the student's embedding module (its output is flattened).
        teacher_layer: dotted name of the teacher's embedding module.
        global_relations: under DDP, relations over the global batch instead of each process's.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, ce_weight: float = 1.0,
                 student_layer: str = "pool", teacher_layer: str = "pool", global_relations: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if distance_weight < 0 or angle_weight < 0 or distance_weight + angle_weight == 0:
            raise ValueError(f"RKD needs distance_weight >= 0 and angle_weight >= 0, not both 0; got "
                             f"{distance_weight} and {angle_weight} (the CIFAR recipe uses 25 and 50).")
        self.global_relations = global_relations
        self.student_hooks = FeatureHooks(self.student, [student_layer])
        self.teacher_hooks = FeatureHooks(self.teacher, [teacher_layer])
        for net, hooks, side in ((self.student, self.student_hooks, "student"),
                                 (self.teacher, self.teacher_hooks, "teacher")):
            (feature,) = self.example_features(net, hooks)
            if feature.ndim < 2:
                raise ValueError(f"RKD: the {side} layer {hooks.names[0]!r} gives shape {tuple(feature.shape)}, "
                                 f"not one embedding per sample; name the penultimate layer (e.g. 'pool').")
        weights = {"ce": ce_weight, "rkd_distance": distance_weight, "rkd_angle": angle_weight}
        self.loss_weights = {name: w for name, w in weights.items() if w != 0 or name == "ce"}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and "rkd_angle" in self.loss_weights:
            check_angle_batch_size(self, self.global_relations)

    def embeddings(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(student_logits, student_embeddings, teacher_embeddings)``, flattened to ``(N, D)``."""
        self.teacher_forward(x)
        s_logits = self.student(x)
        (s_emb,), (t_emb,) = self.student_hooks.features, self.teacher_hooks.features
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        return s_logits, s_emb.flatten(1), t_emb.flatten(1)

    def distill_losses(self, batch):
        x, y = batch
        s_logits, s_emb, t_emb = self.embeddings(x)
        return s_logits, {"ce": F.cross_entropy(s_logits, y), **relation_losses(self, s_emb, t_emb)}
