"""VGG networks with BatchNorm for 32x32 inputs, as used in the distillation literature.

Architecture from "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (Simonyan & Zisserman, ICLR 2015, https://arxiv.org/abs/1409.1556),
in the CIFAR form of "Contrastive Representation Distillation" (Tian et al.,
ICLR 2020, https://arxiv.org/abs/1910.10699): five blocks of
conv3x3-BN-ReLU layers with max-pools between the first four blocks,
global average pooling and a single linear classifier. ``vgg8`` has one conv
per block, ``vgg13`` two.

The convolutions keep their bias, as in the CRD code (RepDistiller's ``models/vgg.py``), whose
checkpoints hold it and load into these networks (``repdistiller_renames``): in front of BatchNorm it
is redundant in training (the batch mean removes it) but not in its evaluation, where it shifts the
running mean. With it the counts are 3,965,028 (vgg8) and 9,462,180 (vgg13) parameters.
"""

from __future__ import annotations

from torch import nn

from .staged import StagedNet

__all__ = ["CifarVGG", "vgg8", "vgg13"]

# Channels of the convolutions in each of the five blocks.
_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class CifarVGG(StagedNet):
    """VGG-BN with named submodules ``stem``, ``layer1``..``layer5``, ``pool``, ``fc``.

    VGG has no separate stem, so ``stem`` is an ``nn.Identity`` kept for a uniform interface.
    ``layerK`` is block K (preceded by the 2x2 max-pool for K = 2, 3, 4); its output is the
    post-ReLU feature map of the block. For a 32x32 input the stages run at 32, 16, 8, 4 and
    4 pixels: there is no max-pool before the fifth block (the CRD code adds one only for
    64x64 inputs).

    Args:
        config: Conv channels per block (five lists).
        num_classes: Number of output logits.
        in_channels: Number of input image channels.
    """

    # RepDistiller's models/vgg.py names: block0..block4 (without our leading max-pool), `classifier`.
    repdistiller_renames = ((r"^layer(\d)\.(\d+)\.",
                          lambda m: f"block{int(m[1]) - 1}.{int(m[2]) - (m[1] in '234')}."),
                         (r"^fc\.", "classifier."))

    def __init__(self, config: list[list[int]], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Identity()
        c_in = in_channels
        for i, channels in enumerate(config, start=1):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i in (2, 3, 4) else []
            for c_out in channels:
                conv = nn.Conv2d(c_in, c_out, 3, padding=1)
                layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.add_head([f"layer{i}" for i in range(1, len(config) + 1)], c_in, num_classes)


def vgg8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarVGG:
    """VGG-8 with BatchNorm (~3.97 M parameters)."""
    return CifarVGG(_CONFIGS["vgg8"], num_classes, in_channels, **kwargs)


def vgg13(num_classes: int = 100, in_channels: int = 3, **kwargs) -> CifarVGG:
    """VGG-13 with BatchNorm (~9.46 M parameters)."""
    return CifarVGG(_CONFIGS["vgg13"], num_classes, in_channels, **kwargs)
