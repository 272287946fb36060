"""The shape every network of the zoo shares: stem -> layer1..layerK -> pool -> fc."""
from __future__ import annotations

import torch
from torch import nn


class StagedNet(nn.Module):
    """Base of the zoo's networks, so features can be hooked by the same names everywhere.

    A subclass builds ``self.stem`` and ``self.layer1``..``layerK``, then calls
    :meth:`add_head`, which adds ``pool`` (global average pool + flatten: the ``(N, D)``
    penultimate embedding) and ``fc``, and initialises the convolutions (He, fan-out).
    """

    stage_names: list[str]
    embedding_dim: int

    def add_head(self, stage_names: list[str], channels: int, num_classes: int) -> None:
        self.stage_names = list(stage_names)
        self.embedding_dim = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))
