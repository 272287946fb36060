"""Relational Knowledge Distillation: distances and angles between the embeddings of a batch.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.
https://arxiv.org/abs/1904.05068
"""
from __future__ import annotations

import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.losses import rkd_mean_scale
from lightning_kd.relations import check_angle_batch_size, relation_losses


class RKD(DistillationModule):
    """RKD: ``ce_weight * CE + distance_weight * L_dist + angle_weight * L_angle``.

    "Relational Knowledge Distillation" (Park et al., CVPR 2019), https://arxiv.org/abs/1904.05068.
    The relations are taken between the penultimate embeddings (the ``pool`` output of the zoo's
    networks) of the samples of a batch. Defaults are the CIFAR-100 recipe of RepDistiller/CRD:
    distance 25, angle 50, CE 1. The Huber terms are averaged as the authors' code does, over all
    ``N^2`` (``N^3``) entries, whose degenerate ones add zero (``normalizer: all_entries``, the
    normalizer the published weights were tuned with); ``normalizer: distinct`` averages over
    distinct pairs and triplets instead, ``N/(N-1)`` (``N^2/((N-1)(N-2))``) times larger: 1.02
    (1.05) at ``N = 64``, 1.07 (1.22) at 16.

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
        normalizer: ``all_entries`` (the authors') or ``distinct``, see above.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, ce_weight: float = 1.0,
                 student_layer: str = "pool", teacher_layer: str = "pool", global_relations: bool = False,
                 normalizer: str = "all_entries", **kwargs):
        super().__init__(**kwargs)
        rkd_mean_scale(3, 3, normalizer)  # a bad name fails here, before training
        self.normalizer = normalizer
        if distance_weight < 0 or angle_weight < 0 or distance_weight + angle_weight == 0:
            raise ValueError(f"RKD needs distance_weight >= 0 and angle_weight >= 0, not both 0; got "
                             f"{distance_weight} and {angle_weight} (the CIFAR recipe uses 25 and 50).")
        self.global_relations = global_relations
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        features = self.watch_layers([student_layer], [teacher_layer])
        for side, layer, found in zip(("student", "teacher"), (student_layer, teacher_layer), features):
            if found[layer].ndim < 2:
                raise ValueError(f"RKD: the {side} layer {layer!r} gives shape {tuple(found[layer].shape)}, "
                                 f"not one embedding per sample; name the penultimate layer (e.g. 'pool').")
        weights = {"ce": ce_weight, "rkd_distance": distance_weight, "rkd_angle": angle_weight}
        self.loss_weights = {name: w for name, w in weights.items() if w != 0 or name == "ce"}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            check_angle_batch_size(self, self.global_relations)

    def distill_losses(self, student, teacher, batch):
        s_emb = student.features[self.student_layer].flatten(1)
        t_emb = teacher.features[self.teacher_layer].flatten(1)
        return {"ce": F.cross_entropy(student.logits, batch.y),
                **relation_losses(self, s_emb, t_emb, self.global_relations, self.normalizer)}
