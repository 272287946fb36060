"""MobileNetV2 for 32x32 inputs: the "MobileNetV2" student of CRD's CIFAR-100 table.

Architecture of "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (Sandler et al., CVPR
2018, https://arxiv.org/abs/1801.04381) in the CIFAR form of "Contrastive Representation
Distillation" (Tian et al., ICLR 2020, https://arxiv.org/abs/1910.10699), from its code (RepDistiller's
``mobile_half``, itself from the RCO paper's code): width multiplier 0.5, expansion 6, the stem's
stride 2 and the second group's stride 1 (the paper's is 2), so a 32x32 input ends at 2x2. Unlike the
paper, a block of expansion 1 keeps its 1x1 expansion convolution. The 1x1 conv-BN-ReLU to 1280
channels runs in ``pool``, before the average. It is the same function as RepDistiller's network,
whose checkpoints load into it (``repdistiller_renames``).
"""
from __future__ import annotations

from torch import Tensor, nn

from .staged import StagedNet

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# (expansion t, output channels c, blocks n, first stride s) of each group, CIFAR strides; t = 0 stands
# for the network's `expansion` argument.
_GROUPS = [(1, 16, 1, 1), (0, 24, 2, 1), (0, 32, 3, 2), (0, 64, 4, 2), (0, 96, 3, 1), (0, 160, 3, 2), (0, 320, 1, 1)]
# The groups of each stage: the stage outputs are RepDistiller's feature points f1..f4.
_STAGES = [(0, 1), (2,), (3, 4), (5, 6)]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise (strided), 1x1 linear projection, each conv-BN (ReLU after the
    first two); identity shortcut when the shape is kept.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the depthwise convolution.
        expansion: Hidden channels are ``expansion * c_in``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_shortcut = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            *_conv_bn_relu(c_in, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


class MobileNetV2(StagedNet):
    """MobileNetV2 with named submodules ``stem``, ``layer1``..``layer4``, ``pool``, ``fc``.

    ``stem`` is a 3x3 conv-BN-ReLU of stride 2. ``layerK`` holds block groups (``layerK.i`` a group,
    ``layerK.i.j`` a block): groups 1-2, 3, 4-5 and 6-7, at 16, 8, 4 and 2 pixels for a 32x32 input.
    Their outputs are linear bottlenecks (no ReLU). ``pool`` is the 1x1 conv-BN-ReLU to ``embedding_dim``
    (1280) channels, then the global average.

    Args:
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        width_mult: Width multiplier of every layer but the last (0.5: CRD's "MobileNetV2").
        expansion: Expansion of the blocks after the first group (6).
    """

    # RepDistiller's models/mobilenetv2.py names: conv1 stem, blocks.G.j, conv2 (our pool.0), classifier.0.
    repdistiller_renames = ((r"^stem\.", "conv1."),
                         (r"^layer(\d)\.(\d)\.", lambda m: f"blocks.{_STAGES[int(m[1]) - 1][int(m[2])]}."),
                         (r"^pool\.0\.", "conv2."), (r"^fc\.", "classifier.0."))

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5,
                 expansion: int = 6) -> None:
        super().__init__()
        c_in = int(32 * width_mult)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, c_in, 3, stride=2))
        groups = []
        for t, c, n, s in _GROUPS:
            c_out = int(c * width_mult)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if j == 0 else 1, t or expansion))
                c_in = c_out
            groups.append(nn.Sequential(*blocks))
        for i, members in enumerate(_STAGES, start=1):
            setattr(self, f"layer{i}", nn.Sequential(*(groups[g] for g in members)))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.add_head(["layer1", "layer2", "layer3", "layer4"], c_in, num_classes,
                      neck=nn.Sequential(*_conv_bn_relu(c_in, last, 1)), pooled_channels=last)


def mobilenetv2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> MobileNetV2:
    """CRD's MobileNetV2 (width 0.5, expansion 6; ~0.81 M parameters)."""
    return MobileNetV2(num_classes, in_channels, **kwargs)
