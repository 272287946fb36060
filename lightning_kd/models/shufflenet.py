"""ShuffleNet V1 and V2 for 32x32 inputs: the students of CRD's CIFAR-100 table.

"ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices" (Zhang et al.,
CVPR 2018, https://arxiv.org/abs/1707.01083) and "ShuffleNet V2: Practical Guidelines for Efficient
CNN Architecture Design" (Ma et al., ECCV 2018, https://arxiv.org/abs/1807.11164), in the CIFAR form
of "Contrastive Representation Distillation" (Tian et al., ICLR 2020, https://arxiv.org/abs/1910.10699)
and its code (RepDistiller's ``ShuffleV1``, ``ShuffleV2``): a 1x1 conv-BN-ReLU stem of 24 channels and
no max-pool, then three stages that each halve the resolution (32x32 -> 4x4). V1 keeps a detail of
that code that differs from its paper, a ReLU after the depthwise convolution, so the code's published
checkpoints load and compute the same function (``repdistiller_renames``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .staged import StagedNet

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "shufflenet_v1", "shufflenet_v2"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: ``(N, g*k, H, W)`` channel ``i*k + j`` goes to ``j*g + i``."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _stem(in_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))


class ShuffleUnitV1(nn.Module):
    """Grouped 1x1 (reduce to ``c_out / 4``), channel shuffle, 3x3 depthwise (strided), grouped 1x1 to
    ``c_out``; each conv-BN, ReLU after the first two. Stride 1 adds the input; stride 2 concatenates a
    3x3 average pool of it (the unit then outputs ``c_out + c_in`` channels). ReLU at the end.

    Args:
        c_in: Input channels.
        c_out: Channels of the residual branch.
        stride: 1 or 2.
        groups: Groups of the 1x1 convolutions (the first one ungrouped when ``c_in`` is the stem's 24).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = c_out // 4
        self.first_groups = 1 if c_in == 24 else groups
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(torch.cat([out, self.shortcut(x)], 1) if self.shortcut is not None else out + x)


class ShuffleNetV1(StagedNet):
    """ShuffleNet V1 (g = 3, 1x) with named submodules ``stem``, ``layer1``..``layer3``, ``pool``, ``fc``.

    Stage outputs are post-ReLU at 16, 8 and 4 pixels for a 32x32 input, 240, 480 and 960 channels.

    Args:
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        channels: Output channels of the three stages.
        blocks: Units per stage.
        groups: Groups of the pointwise convolutions.
    """

    # RepDistiller's models/ShuffleNetv1.py names: conv1/bn1 stem, `linear`.
    repdistiller_renames = ((r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."), (r"^fc\.", "linear."))

    def __init__(self, num_classes: int = 100, in_channels: int = 3, channels: tuple[int, ...] = (240, 480, 960),
                 blocks: tuple[int, ...] = (4, 8, 4), groups: int = 3) -> None:
        super().__init__()
        self.stem = _stem(in_channels)
        c_in = 24
        for i, (c_out, n) in enumerate(zip(channels, blocks), start=1):
            units = [ShuffleUnitV1(c_in, c_out - c_in, 2, groups)]  # its pooled input makes up c_out
            units += [ShuffleUnitV1(c_out, c_out, 1, groups) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*units))
            c_in = c_out
        self.add_head(["layer1", "layer2", "layer3"], c_in, num_classes)


class ShuffleUnitV2(nn.Module):
    """A ShuffleNet V2 unit. Stride 1: half the channels pass, the other half go through 1x1-BN-ReLU,
    3x3 depthwise-BN, 1x1-BN-ReLU. Stride 2: two branches of the whole input (3x3 depthwise-BN,
    1x1-BN-ReLU; and 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU), ``c_out / 2`` channels each.
    Then concatenation and a shuffle of the two halves.

    Args:
        c_in: Input channels.
        c_out: Output channels (``c_in`` for stride 1).
        stride: 1 or 2.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        if stride == 1:
            half = c_in // 2
            self.conv1, self.bn1 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)
            self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
            self.bn2 = nn.BatchNorm2d(half)
            self.conv3, self.bn3 = nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half)
            return
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False)  # the input's branch
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2, self.bn2 = nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid)  # the deep branch
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5, self.bn5 = nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            kept, x = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2:]
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return channel_shuffle(torch.cat([kept, F.relu(self.bn3(self.conv3(out)))], 1), 2)
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        return channel_shuffle(torch.cat([left, F.relu(self.bn5(self.conv5(right)))], 1), 2)


class ShuffleNetV2(StagedNet):
    """ShuffleNet V2 (1x) with named submodules ``stem``, ``layer1``..``layer3``, ``pool``, ``fc``.

    Each stage is a stride-2 unit and ``blocks`` stride-1 units; outputs at 16, 8 and 4 pixels for a
    32x32 input, 116, 232 and 464 channels, all non-negative. ``pool`` is the 1x1 conv-BN-ReLU to
    ``embedding_dim`` (1024) channels, then the global average.

    Args:
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
        channels: Output channels of the three stages and of the 1x1 convolution before the pool.
        blocks: Stride-1 units per stage (after its stride-2 unit).
    """

    # RepDistiller's models/ShuffleNetv2.py names: conv1/bn1 stem, conv2/bn2 (our pool.0), `linear`.
    repdistiller_renames = ((r"^stem\.0\.", "conv1."), (r"^stem\.1\.", "bn1."), (r"^pool\.0\.0\.", "conv2."),
                         (r"^pool\.0\.1\.", "bn2."), (r"^fc\.", "linear."))

    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 channels: tuple[int, ...] = (116, 232, 464, 1024), blocks: tuple[int, ...] = (3, 7, 3)) -> None:
        super().__init__()
        self.stem = _stem(in_channels)
        c_in = 24
        for i, (c_out, n) in enumerate(zip(channels, blocks), start=1):
            units = [ShuffleUnitV2(c_in, c_out, 2)] + [ShuffleUnitV2(c_out, c_out, 1) for _ in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*units))
            c_in = c_out
        neck = nn.Sequential(nn.Conv2d(c_in, channels[3], 1, bias=False), nn.BatchNorm2d(channels[3]),
                             nn.ReLU(inplace=True))
        self.add_head(["layer1", "layer2", "layer3"], c_in, num_classes, neck=neck, pooled_channels=channels[3])


def shufflenet_v1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ShuffleNetV1:
    """CRD's ShuffleNetV1 (g = 3; ~0.95 M parameters)."""
    return ShuffleNetV1(num_classes, in_channels, **kwargs)


def shufflenet_v2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ShuffleNetV2:
    """CRD's ShuffleNetV2 (1x; ~1.36 M parameters)."""
    return ShuffleNetV2(num_classes, in_channels, **kwargs)
