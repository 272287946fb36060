"""torchmetrics Metrics the library adds: Recall@K of retrieval (metric learning, RKD's main task)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


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


class RecallAtK(Metric):
    """Recall@K (:func:`recall_at_k`) over every sample updated since the last reset, each one a query
    against all the others: the retrieval set of a whole validation or test split.

    The embeddings and labels are kept (torchmetrics "cat" states) and gathered from every process on
    ``compute`` in rank order, so under DDP the retrieval set is the whole split (the distributed sampler
    may repeat up to ``world_size - 1`` samples to even out the shards). ``compute`` returns
    ``{k: recall}`` as Python floats.

    Args:
        ks: the ``k`` values.
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 2, 4, 8), **kwargs):
        super().__init__(**kwargs)
        self.ks = tuple(int(k) for k in ks)
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        self.embeddings.append(embeddings.detach())
        self.labels.append(labels.detach())

    def compute(self) -> dict[int, float]:
        return recall_at_k(dim_zero_cat(self.embeddings), dim_zero_cat(self.labels), self.ks)
