"""Metric learning, the main task of RKD: embeddings trained on some classes, retrieval on others.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.
https://arxiv.org/abs/1904.05068 (Sec. 4.1: teacher and student embedding networks, Recall@K on
classes unseen in training).
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from lightning_kd.base import DistillationModule, StudentModule
from lightning_kd.losses import batch_hard_triplet_loss
from lightning_kd.metrics import RecallAtK
from lightning_kd.relations import check_angle_batch_size, relation_losses


def embedding_layer(net: nn.Module, layer: Optional[str], side: str) -> str:
    """``layer`` if given; else ``embedding`` (an EmbeddingNet's) when the network has it, else ``pool``."""
    if layer is not None:
        return layer
    names = dict(net.named_modules())
    for default in ("embedding", "pool"):
        if default in names:
            return default
    raise ValueError(f"metric learning reads the {side}'s embedding from a layer, but {type(net).__name__} "
                     f"has neither `embedding` nor `pool`: set the layer's name, or use "
                     f"{{name: lightning_kd.models.embedding.EmbeddingNet, backbone: ...}}.")


class RetrievalEvaluation:
    """Validation and test by Recall@K (``val/recall@1`` ... ``val/recall@8``) over the whole split
    (:class:`~lightning_kd.metrics.RecallAtK`), from the embeddings (the ``student_layer``, and the
    ``teacher_layer`` where there is a teacher, as ``teacher/recall@K``) of the base's evaluation outputs."""

    def add_recall_metrics(self, teacher: bool) -> None:
        self.recall = RecallAtK(self.recall_ks)
        self.teacher_recall = RecallAtK(self.recall_ks) if teacher else None

    def collect(self, batch) -> None:
        x, y, _ = self.unpack(batch)
        student, teacher = self.evaluation_outputs(x)
        self.recall.update(student.features[self.student_layer].flatten(1), y)
        if teacher is not None:
            self.teacher_recall.update(teacher.features[self.teacher_layer].flatten(1), y)

    def log_recalls(self, stage: str) -> None:
        for prefix, metric in ((stage, self.recall), ("teacher", self.teacher_recall)):
            if metric is None or not metric.update_called:
                continue
            for k, value in metric.compute().items():
                self.log(f"{prefix}/recall@{k}", value, prog_bar=(k == 1 and prefix == stage))
            metric.reset()

    def validation_step(self, batch, batch_idx):
        self.collect(batch)

    def on_validation_epoch_end(self):
        self.log_recalls("val")

    def test_step(self, batch, batch_idx):
        self.collect(batch)

    def on_test_epoch_end(self):
        self.log_recalls("test")


class MetricLearning(RetrievalEvaluation, StudentModule):
    """Deep metric learning of an embedding network (teachers and student baselines), evaluated
    by Recall@K on classes unseen in training.

    "Relational Knowledge Distillation" (Park et al., CVPR 2019), https://arxiv.org/abs/1904.05068,
    trains its metric-learning teachers with a triplet loss (margin 0.2, distance-weighted
    sampling); here the triplets are mined batch-hard from random batches (Hermans et al., 2017).
    The network's classifier ``fc`` is frozen: the task has no class logits to learn.

    Args:
        margin: triplet margin.
        recall_ks: the ``k`` of the logged Recall@K.
        student_layer: the layer whose output is the embedding (default: ``embedding`` of an
            :class:`~lightning_kd.models.embedding.EmbeddingNet`, else ``pool``).
        **kwargs: see :class:`~lightning_kd.base.StudentModule`.
    """

    def __init__(self, margin: float = 0.2, recall_ks: Sequence[int] = (1, 2, 4, 8),
                 student_layer: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}; the RKD paper uses 0.2.")
        self.margin = float(margin)
        self.recall_ks = tuple(int(k) for k in recall_ks)
        self.student_layer = embedding_layer(self.student, student_layer, "student")
        self.watch_student([self.student_layer])
        if hasattr(self.student, "fc"):
            self.student.fc.requires_grad_(False)
        self.loss_weights = {"triplet": 1.0}
        self.add_recall_metrics(teacher=False)

    def student_losses(self, student, batch):
        embeddings = student.features[self.student_layer].flatten(1)
        return {"triplet": batch_hard_triplet_loss(embeddings, batch.y, self.margin)}


class MetricRKD(RetrievalEvaluation, DistillationModule):
    """An embedding student distilled from an embedding teacher with RKD, Recall@K on unseen classes.

    "Relational Knowledge Distillation" (Park et al., CVPR 2019), https://arxiv.org/abs/1904.05068,
    Sec. 4.1: the student's embedding learns the distances and angles of the teacher's embeddings,
    with the paper's metric-learning weights (distance 1, angle 2) and no triplet term by default.
    ``teacher/recall@K`` is logged beside the student's.

    Args:
        distance_weight: weight of the distance-wise loss (0 leaves it out).
        angle_weight: weight of the angle-wise loss (0 leaves it out).
        triplet_weight: weight of the student's own triplet loss (0 leaves it out).
        margin: triplet margin.
        recall_ks: the ``k`` of the logged Recall@K.
        student_layer, teacher_layer: the layers whose outputs are the embeddings (default:
            ``embedding`` of an EmbeddingNet, else ``pool``).
        global_relations: under DDP, relations over the global batch (see :class:`RKD`).
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`; ``teacher`` and ``teacher_ckpt``
            name a trained embedding network (e.g. ``best.ckpt`` of a :class:`MetricLearning` run).
    """

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0, triplet_weight: float = 0.0,
                 margin: float = 0.2, recall_ks: Sequence[int] = (1, 2, 4, 8), student_layer: Optional[str] = None,
                 teacher_layer: Optional[str] = None, global_relations: bool = False, **kwargs):
        super().__init__(**kwargs)
        if self.cache_teacher_outputs:
            raise ValueError("MetricRKD reads the teacher's embeddings, not its logits: remove cache_teacher_outputs.")
        weights = {"rkd_distance": distance_weight, "rkd_angle": angle_weight, "triplet": triplet_weight}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"MetricRKD needs weights >= 0, not all 0; got {weights}.")
        self.loss_weights = {name: w for name, w in weights.items() if w != 0}
        self.margin, self.recall_ks, self.global_relations = float(margin), tuple(recall_ks), global_relations
        self.student_layer = embedding_layer(self.student, student_layer, "student")
        self.teacher_layer = embedding_layer(self.teacher.net, teacher_layer, "teacher")
        self.watch_layers([self.student_layer], [self.teacher_layer])
        if hasattr(self.student, "fc"):
            self.student.fc.requires_grad_(False)
        self.add_recall_metrics(teacher=True)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            check_angle_batch_size(self, self.global_relations)

    def distill_losses(self, student, teacher, batch):
        s_emb = student.features[self.student_layer].flatten(1)
        t_emb = teacher.features[self.teacher_layer].flatten(1)
        losses = relation_losses(self, s_emb, t_emb, self.global_relations)
        if "triplet" in self.loss_weights:
            losses["triplet"] = batch_hard_triplet_loss(s_emb, batch.y, self.margin)
        return losses
