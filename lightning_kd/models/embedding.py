"""An embedding network for metric learning: any backbone of the zoo with its classifier replaced
by a linear embedding layer (the setting of "Relational Knowledge Distillation", Park et al.,
CVPR 2019, https://arxiv.org/abs/1904.05068, Sec. 4.1)."""
from __future__ import annotations

from typing import Any, Union

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.models import build_network


class L2Normalize(nn.Module):
    """Scales every row to unit L2 norm."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)


class EmbeddingNet(nn.Module):
    """``backbone`` pooled features -> ``Linear`` -> an ``embedding_dim`` embedding.

    The submodule ``embedding`` outputs the embedding (L2-normalized when ``normalize``), which
    metric-learning methods read by that name; ``embed(x)`` returns it. ``forward(x)`` gives class
    logits from a linear ``fc`` on it, so the network also fits the zoo's contract
    (metric-learning methods freeze ``fc`` and never use it).

    Args:
        num_classes: outputs of ``fc`` (the training classes).
        in_channels: input image channels.
        backbone: a network spec for :func:`~lightning_kd.models.build_network` whose last layer
            is a linear ``fc`` (all networks of the zoo, torchvision ResNets).
        embedding_dim: size of the embedding.
        normalize: L2-normalize the embedding (the usual choice for triplet training; a student
            distilled with RKD may leave it unnormalized).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 backbone: Union[str, dict[str, Any]] = "resnet8x4", embedding_dim: int = 64,
                 normalize: bool = True):
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.backbone = build_network(backbone, num_classes, in_channels)
        head = getattr(self.backbone, "fc", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"EmbeddingNet needs a backbone whose classifier is a Linear `fc`, but "
                             f"{type(self.backbone).__name__}.fc is {type(head).__name__}; use a network "
                             f"of lightning_kd.models or a torchvision ResNet.")
        self.backbone.fc = nn.Identity()  # the backbone now ends at its pooled features
        linear = nn.Linear(head.in_features, embedding_dim)
        self.embedding = nn.Sequential(linear, L2Normalize()) if normalize else nn.Sequential(linear)
        self.fc = nn.Linear(embedding_dim, num_classes)
        self.embedding_dim = embedding_dim

    def embed(self, x: Tensor) -> Tensor:
        return self.embedding(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))
