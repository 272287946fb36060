"""A small CNN for scikit-learn's 8x8 handwritten digits.

Used for fast, CPU-only distillation experiments (e.g. a ``width=64`` teacher and a
``width=8`` student), in the spirit of "Distilling the Knowledge in a Neural Network"
(Hinton, Vinyals & Dean, 2015, https://arxiv.org/abs/1503.02531).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "small_cnn"]


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Conv stem and three conv-BN-ReLU stages (8x8 -> 4x4 -> 2x2), global pool, linear head.

    Submodules: ``stem`` (8x8, ``width`` channels), ``layer1`` (8x8, ``width``), ``layer2``
    (4x4, ``2 * width``), ``layer3`` (2x2, ``4 * width``), ``pool`` (global average pool +
    flatten, giving the ``(N, 4 * width)`` embedding) and ``fc``.

    Args:
        num_classes: Number of output logits.
        in_channels: Number of input image channels (1 for the digits data set).
        width: Channels of the stem and first stage; the later stages use 2x and 4x.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width)
        self.layer1 = _conv_bn_relu(width, width)
        self.layer2 = _conv_bn_relu(width, 2 * width, stride=2)
        self.layer3 = _conv_bn_relu(2 * width, 4 * width, stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)
        self.stage_names = ["layer1", "layer2", "layer3"]
        self.embedding_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x))


def small_cnn(num_classes: int = 10, in_channels: int = 1, **kwargs) -> SmallCNN:
    """Constructor alias of :class:`SmallCNN` (accepts ``width``)."""
    return SmallCNN(num_classes, in_channels, **kwargs)
