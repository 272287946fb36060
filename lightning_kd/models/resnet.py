"""CIFAR-style ResNets used throughout the knowledge-distillation literature.

The networks follow "Deep Residual Learning for Image Recognition"
(He et al., CVPR 2016, https://arxiv.org/abs/1512.03385): a 3x3 stem followed
by three stages of ``BasicBlock`` s, ``depth = 6n + 2``. The plain variants
(``resnet20/56/110``) use stage widths 16, 32, 64. The "x4" variants
(``resnet8x4``, ``resnet32x4``) use a 32-channel stem and stage widths
64, 128, 256, as defined in the CRD code base ("Contrastive Representation
Distillation", Tian et al., ICLR 2020, https://arxiv.org/abs/1910.10699).
Shortcuts that change shape are 1x1 convolution + BatchNorm (option B), which
is what reproduces the parameter counts of CRD's Table 1.

``ResNet50`` is CRD's CIFAR ResNet-50: the ImageNet network's bottleneck stages (3, 4, 6, 3 blocks
of widths 64..512, expansion 4) after a 3x3 stem with no max-pool, so a 32x32 input ends at 4x4.

All are the same functions as the CRD code's networks (RepDistiller's ``models/resnet.py`` and
``models/resnetv2.py``), whose checkpoints load into them (``repdistiller_renames``).
"""

from __future__ import annotations

import torch
from torch import nn

from .staged import StagedNet

__all__ = ["ResidualBlock", "BasicBlock", "Bottleneck", "CifarResNet", "BottleneckResNet", "resnet20", "resnet32",
           "resnet56", "resnet110", "resnet8x4", "resnet32x4", "ResNet50"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class ResidualBlock(nn.Module):
    """``relu(residual(x) + shortcut(x))``; the shortcut is the identity, or a 1x1 conv-BN (option B) when
    the block changes the shape.

    Args:
        residual: The residual branch, ending in a BatchNorm.
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the block (and of the shortcut).
    """

    def __init__(self, residual: nn.Sequential, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.residual = residual
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class BasicBlock(ResidualBlock):
    """Two 3x3 conv-BN layers with a ReLU between them (see :class:`ResidualBlock`).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution (and of the shortcut).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        residual = nn.Sequential(*_conv_bn(c_in, c_out, 3, stride), nn.ReLU(inplace=True), *_conv_bn(c_out, c_out, 3))
        super().__init__(residual, c_in, c_out, stride)


class CifarResNet(StagedNet):
    """ResNet for 32x32 inputs: stem, three stages of ``BasicBlock`` s, global pool, linear head.

    Submodules are named for feature hooks: ``stem``, ``layer1``..``layer3`` (post-ReLU stage
    outputs at 32x32, 16x16 and 8x8 for a 32x32 input), ``pool`` (global average pool +
    flatten, giving the ``(N, embedding_dim)`` embedding) and ``fc``.

    Args:
        depth: Network depth, must be ``6n + 2``.
        widths: Stem width followed by the three stage widths.
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
    """

    # RepDistiller's models/resnet.py names: conv1/bn1 stem, blocks' conv1 bn1 conv2 bn2, `downsample`.
    repdistiller_renames = ((r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
                         (r"\.residual\.0\.", ".conv1."), (r"\.residual\.1\.", ".bn1."),
                         (r"\.residual\.3\.", ".conv2."), (r"\.residual\.4\.", ".bn2."),
                         (r"\.shortcut\.", ".downsample."))

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet depth must be 6n+2 (e.g. 8, 20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn(in_channels, widths[0], 3), nn.ReLU(inplace=True))
        c_in = widths[0]
        for i, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = [BasicBlock(c_in if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            c_in = width
        self.add_head(["layer1", "layer2", "layer3"], c_in, num_classes)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each conv-BN, ReLU between (see :class:`ResidualBlock`).

    Args:
        c_in: Input channels.
        width: Channels of the 3x3 convolution; the block outputs ``4 * width``.
        stride: Stride of the 3x3 convolution (and of the shortcut).
    """

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        c_out = self.expansion * width
        residual = nn.Sequential(*_conv_bn(c_in, width, 1), nn.ReLU(inplace=True), *_conv_bn(width, width, 3, stride),
                                 nn.ReLU(inplace=True), *_conv_bn(width, c_out, 1))
        super().__init__(residual, c_in, c_out, stride)


class BottleneckResNet(StagedNet):
    """A bottleneck ResNet for 32x32 inputs: 3x3 stem (64 channels, no max-pool), four stages of
    :class:`Bottleneck` s of widths 64, 128, 256, 512 (strides 1, 2, 2, 2), global pool, linear head.

    Submodules: ``stem``, ``layer1``..``layer4`` (post-ReLU, at 32, 16, 8 and 4 pixels for a 32x32
    input), ``pool`` (the ``(N, 2048)`` embedding) and ``fc``.

    Args:
        blocks: Blocks per stage (``(3, 4, 6, 3)`` for ResNet-50).
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
    """

    # RepDistiller's models/resnetv2.py names: conv1/bn1 stem, blocks' conv1..bn3, `shortcut`, `linear`.
    repdistiller_renames = ((r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."),
                         (r"\.residual\.0\.", ".conv1."), (r"\.residual\.1\.", ".bn1."),
                         (r"\.residual\.3\.", ".conv2."), (r"\.residual\.4\.", ".bn2."),
                         (r"\.residual\.6\.", ".conv3."), (r"\.residual\.7\.", ".bn3."),
                         (r"^fc\.", "linear."))

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, 64, 3), nn.ReLU(inplace=True))
        c_in = 64
        for i, (n, width, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            layer = []
            for j in range(n):
                layer.append(Bottleneck(c_in, width, stride if j == 0 else 1))
                c_in = Bottleneck.expansion * width
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.add_head(["layer1", "layer2", "layer3", "layer4"], c_in, num_classes)


def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-20 (widths 16/32/64, ~0.28 M parameters)."""
    return CifarResNet(20, (16, 16, 32, 64), num_classes, in_channels, **kwargs)


def resnet32(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-32 (widths 16/32/64, ~0.47 M parameters)."""
    return CifarResNet(32, (16, 16, 32, 64), num_classes, in_channels, **kwargs)


def resnet56(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-56 (widths 16/32/64, ~0.86 M parameters)."""
    return CifarResNet(56, (16, 16, 32, 64), num_classes, in_channels, **kwargs)


def resnet110(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-110 (widths 16/32/64, ~1.74 M parameters)."""
    return CifarResNet(110, (16, 16, 32, 64), num_classes, in_channels, **kwargs)


def resnet8x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-8x4 of CRD (stem 32, widths 64/128/256, ~1.23 M parameters)."""
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_channels, **kwargs)


def resnet32x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarResNet:
    """ResNet-32x4 of CRD (stem 32, widths 64/128/256, ~7.43 M parameters)."""
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_channels, **kwargs)


def ResNet50(num_classes: int = 100, in_channels: int = 3, **kwargs) -> BottleneckResNet:
    """CRD's CIFAR ResNet-50 (bottleneck blocks 3/4/6/3, ~23.71 M parameters)."""
    return BottleneckResNet((3, 4, 6, 3), num_classes, in_channels, **kwargs)
