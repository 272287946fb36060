"""Wide Residual Networks (WRN-d-k) for 32x32 inputs.

Implements "Wide Residual Networks" (Zagoruyko & Komodakis, BMVC 2016,
https://arxiv.org/abs/1605.07146): a 3x3 stem and three stages of
pre-activation wide blocks (BN-ReLU-conv-BN-ReLU-conv) with widths
16k, 32k, 64k and ``depth = 6n + 4``. ``wrn_16_2`` and ``wrn_40_2`` are the
teacher/student pair of "Contrastive Representation Distillation"
(Tian et al., ICLR 2020, https://arxiv.org/abs/1910.10699), ``wrn_40_1`` a student of its table.
They are the same functions as the CRD code's (RepDistiller's ``models/wrn.py``), whose checkpoints
load into them (``repdistiller_renames``).
"""

from __future__ import annotations

import torch
from torch import nn

from .staged import StagedNet

__all__ = ["WideBlock", "WideResNet", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class WideBlock(nn.Module):
    """Pre-activation wide basic block; 1x1 conv shortcut when the shape changes.

    As in the original implementation, a projecting shortcut is applied to the
    pre-activated input, so both branches share the first BN-ReLU.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
        drop_rate: Dropout probability between the two convolutions.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.preact = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        )
        self.project = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if self.project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.preact(x)
        return self.residual(act) + self.shortcut(act if self.project else x)


class WideResNet(StagedNet):
    """WRN-depth-k with named submodules ``stem``, ``layer1``..``layer3``, ``pool``, ``fc``.

    Stage outputs: because the blocks are pre-activation, ``layer1`` and ``layer2`` output
    the raw residual sums (their BN-ReLU is applied at the start of the next block). The
    network's final BN-ReLU is placed as the last module *inside* ``layer3``, so the output
    of ``layer3`` is the post-ReLU feature map that is pooled into the embedding.

    Args:
        depth: Network depth, must be ``6n + 4``.
        widen_factor: Width multiplier ``k``.
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        drop_rate: Dropout probability inside the blocks.
    """

    # RepDistiller's models/wrn.py names: conv1 stem, blockI.layer.J (bn1 conv1 bn2 conv2 convShortcut),
    # the final BN (last module of our layer3) bn1.
    repdistiller_renames = ((r"^stem\.", "conv1."),
                         (r"^layer3\.\d+\.(weight|bias|running_\w+|num_batches_tracked)$", r"bn1.\1"),
                         (r"^layer(\d)\.(\d+)\.", r"block\1.layer.\2."), (r"\.preact\.0\.", ".bn1."),
                         (r"\.residual\.0\.", ".conv1."), (r"\.residual\.1\.", ".bn2."),
                         (r"\.residual\.4\.", ".conv2."), (r"\.shortcut\.", ".convShortcut."))

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 16, 28, 40), got {depth}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        c_in = 16
        for i, stride in enumerate((1, 2, 2), start=1):
            width = 16 * widen_factor * 2 ** (i - 1)
            blocks: list[nn.Module] = [
                WideBlock(c_in if j == 0 else width, width, stride if j == 0 else 1, drop_rate) for j in range(n)
            ]
            if i == 3:  # final BN-ReLU lives inside layer3 (see class docstring)
                blocks += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            c_in = width
        self.add_head(["layer1", "layer2", "layer3"], c_in, num_classes)


def wrn_16_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-16-2 (~0.70 M parameters)."""
    return WideResNet(16, 2, num_classes, in_channels, **kwargs)


def wrn_40_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-1 (~0.57 M parameters)."""
    return WideResNet(40, 1, num_classes, in_channels, **kwargs)


def wrn_40_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-2 (~2.26 M parameters)."""
    return WideResNet(40, 2, num_classes, in_channels, **kwargs)
