"""Metric learning, the main task of RKD: embeddings trained on some classes, retrieval on others.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation", CVPR 2019.
https://arxiv.org/abs/1904.05068 (Sec. 4.1: teacher and student embedding networks, Recall@K on
classes unseen in training).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_kd.base import DistillationModule
from lightning_kd.features import FeatureHooks
from lightning_kd.methods.rkd import check_angle_batch_size, pairwise_distances, relation_losses


def recall_at_k(embeddings: Tensor, labels: Tensor, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[int, float]:
    """Recall@K of retrieval: the fraction of queries whose ``k`` nearest other samples (Euclidean,
    the query itself left out) include one of its class. Every sample is a query.

    Args:
        embeddings: ``(N, D)`` embeddings, ``N >= 2``.
        labels: ``(N,)`` class labels.
        ks: the ``k`` values; a ``k >= N`` counts all other samples.

    Returns:
        ``{k: recall in [0, 1]}``.
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1] or embeddings.shape[0] < 2:
        raise ValueError(f"recall_at_k needs (N, D) embeddings and (N,) labels with N >= 2, got "
                         f"{tuple(embeddings.shape)} and {tuple(labels.shape)}")
    n = embeddings.shape[0]
    distances = torch.cdist(embeddings.float(), embeddings.float())
    distances.fill_diagonal_(float("inf"))  # a query never retrieves itself
    nearest = distances.topk(min(max(ks), n - 1), dim=1, largest=False).indices
    hits = labels[nearest] == labels[:, None]
    return {k: int(hits[:, :k].any(dim=1).sum()) / n for k in ks}


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    """Triplet loss with batch-hard mining: per anchor, its farthest positive and nearest negative,
    ``mean(relu(d(a, p) - d(a, n) + margin))`` over anchors that have both in the batch.

    "In Defense of the Triplet Loss for Person Re-Identification" (Hermans, Beyer, Leibe, 2017),
    https://arxiv.org/abs/1703.07737. A batch without any valid anchor gives 0 (with a graph).
    """
    distances = pairwise_distances(embeddings.float())
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives, negatives = same & ~eye, ~same
    valid = positives.any(1) & negatives.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_positive = distances.masked_fill(~positives, float("-inf")).amax(1)
    hardest_negative = distances.masked_fill(~negatives, float("inf")).amin(1)
    return (hardest_positive - hardest_negative + margin).relu()[valid].mean()


def embedding_function(net: nn.Module, side: str) -> Callable[[Tensor], Tensor]:
    """``net.embed`` when the network has one (an EmbeddingNet), else its flattened ``pool`` output."""
    if callable(getattr(net, "embed", None)):
        return net.embed
    try:
        hooks = FeatureHooks(net, ["pool"])
    except ValueError as err:
        raise ValueError(f"metric learning needs the {side} to have an `embed(x)` method or a `pool` layer: "
                         f"use {{name: lightning_kd.models.embedding.EmbeddingNet, backbone: ...}} ({err})") from None

    def embed(x: Tensor) -> Tensor:
        net(x)
        (features,) = hooks.features
        hooks.clear()
        return features.flatten(1)
    return embed


class MetricLearning(DistillationModule):
    """Deep metric learning of an embedding network (teachers and student baselines), evaluated
    by Recall@K on classes unseen in training (``val/recall@1`` ... ``val/recall@8``).

    "Relational Knowledge Distillation" (Park et al., CVPR 2019), https://arxiv.org/abs/1904.05068,
    trains its metric-learning teachers with a triplet loss (margin 0.2, distance-weighted
    sampling); here the triplets are mined batch-hard from random batches (Hermans et al., 2017).
    The network's classifier ``fc`` is frozen: the task has no class logits to learn.

    Under DDP the retrieval set is gathered from all processes (the distributed sampler may repeat
    up to ``world_size - 1`` samples to even out the shards).

    Args:
        margin: triplet margin.
        recall_ks: the ``k`` of the logged Recall@K.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`; ``student`` is an
            :class:`~lightning_kd.models.embedding.EmbeddingNet` spec (or any network with an
            ``embed(x)`` method or a ``pool`` layer, whose output is then the embedding).
    """

    uses_teacher = False

    def __init__(self, margin: float = 0.2, recall_ks: Sequence[int] = (1, 2, 4, 8), **kwargs):
        super().__init__(**kwargs)
        self.student_embed = embedding_function(self.student, "student")
        self.teacher_embed = None if self.teacher is None else embedding_function(self.teacher, "teacher")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}; the RKD paper uses 0.2.")
        self.margin = float(margin)
        self.recall_ks = tuple(int(k) for k in recall_ks)
        if hasattr(self.student, "fc"):
            self.student.fc.requires_grad_(False)
        self.loss_weights = {"triplet": 1.0}
        self._retrieval: list[tuple[Tensor, ...]] = []

    def distill_losses(self, batch):
        x, y = batch
        embeddings = self.student_embed(x)
        # The first item is the embeddings: this task has no logits.
        return embeddings, {"triplet": batch_hard_triplet_loss(embeddings, y, self.margin)}

    # ----------------------------------------------------------------- retrieval evaluation
    def collect(self, batch) -> None:
        x, y = self.prepare_batch(batch)
        item = (self.student_embed(x), y)
        if self.teacher is not None:
            with torch.no_grad():
                item += (self.teacher_embed(x),)
        self._retrieval.append(item)

    def log_recalls(self, stage: str) -> None:
        columns = [torch.cat(c) for c in zip(*self._retrieval)]
        self._retrieval.clear()
        if not columns:
            return
        if self.trainer.world_size > 1:
            columns = [self.all_gather(c).flatten(0, 1) for c in columns]
        labels = columns[1]
        sides = [(stage, columns[0])] + ([("teacher", columns[2])] if len(columns) > 2 else [])
        for prefix, embeddings in sides:
            for k, value in recall_at_k(embeddings, labels, self.recall_ks).items():
                self.log(f"{prefix}/recall@{k}", value, prog_bar=(k == 1 and prefix == stage))

    def validation_step(self, batch, batch_idx):
        self.collect(batch)

    def on_validation_epoch_end(self):
        self.log_recalls("val")

    def test_step(self, batch, batch_idx):
        self.collect(batch)

    def on_test_epoch_end(self):
        self.log_recalls("test")


class MetricRKD(MetricLearning):
    """An embedding student distilled from an embedding teacher with RKD, Recall@K on unseen classes.

    "Relational Knowledge Distillation" (Park et al., CVPR 2019), https://arxiv.org/abs/1904.05068,
    Sec. 4.1: the student's embedding learns the distances and angles of the teacher's embeddings,
    with the paper's metric-learning weights (distance 1, angle 2) and no triplet term by default.

    Args:
        distance_weight: weight of the distance-wise loss (0 leaves it out).
        angle_weight: weight of the angle-wise loss (0 leaves it out).
        triplet_weight: weight of the student's own triplet loss (0 leaves it out).
        global_relations: under DDP, relations over the global batch (see :class:`RKD`).
        **kwargs: see :class:`MetricLearning`; ``teacher`` and ``teacher_ckpt`` name a trained
            embedding network (e.g. ``best.ckpt`` of a :class:`MetricLearning` run).
    """

    uses_teacher = True

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0, triplet_weight: float = 0.0,
                 global_relations: bool = False, **kwargs):
        super().__init__(**kwargs)
        if self.cache_teacher_outputs:
            raise ValueError("MetricRKD reads the teacher's embeddings, not its logits: remove cache_teacher_outputs.")
        weights = {"rkd_distance": distance_weight, "rkd_angle": angle_weight, "triplet": triplet_weight}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"MetricRKD needs weights >= 0, not all 0; got {weights}.")
        self.loss_weights = {name: w for name, w in weights.items() if w != 0}
        self.global_relations = global_relations

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and "rkd_angle" in self.loss_weights:
            check_angle_batch_size(self, self.global_relations)

    def distill_losses(self, batch):
        x, y = batch
        with torch.no_grad():
            t_emb = self.teacher_embed(x)
        s_emb = self.student_embed(x)
        losses = {}
        if "triplet" in self.loss_weights:
            losses["triplet"] = batch_hard_triplet_loss(s_emb, y, self.margin)
        return s_emb, {**losses, **relation_losses(self, s_emb, t_emb)}
