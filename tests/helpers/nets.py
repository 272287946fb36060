"""The tests' tiny network: no BatchNorm, so per-process batches under DDP add up exactly to the
global batch, and with lr 0 its eval-mode outputs never change."""
from __future__ import annotations

from torch import Tensor, nn


class TinyMLP(nn.Module):
    """``body`` (flatten, linear, tanh: an ``(N, width)`` embedding) then ``fc``; no ``pool``, no ``embedding``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, pixels: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * pixels, width), nn.Tanh())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))


def tiny_mlp(num_classes: int = 10, in_channels: int = 1) -> TinyMLP:
    return TinyMLP(num_classes, in_channels)


def dropout_mlp(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> TinyMLP:
    """TinyMLP of hidden ``width`` with dropout (p = 0.5) on its embedding: a forward in training mode draws
    random numbers, as many as its width."""
    net = TinyMLP(num_classes, in_channels, width)
    net.body.append(nn.Dropout(0.5))
    return net
