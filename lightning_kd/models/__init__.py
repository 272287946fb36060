"""Model zoo: the CIFAR networks of the distillation literature and a small digits CNN.

Every constructor has the signature ``name(num_classes=100, in_channels=3, **kwargs)``
(``small_cnn`` defaults to ``num_classes=10, in_channels=1``) and returns a module whose
``forward(x)`` gives ``(N, num_classes)`` logits. Models expose the submodules ``stem``,
``layer1``.. (listed in ``model.stage_names``), ``pool`` (the ``(N, model.embedding_dim)``
penultimate embedding) and ``fc``, so intermediate features can be hooked by name.
Architectures and parameter counts follow "Contrastive Representation Distillation"
(Tian et al., ICLR 2020, https://arxiv.org/abs/1910.10699), Table 1, and its code: every CIFAR
network is the same function as RepDistiller's and loads its (and mdistiller's) checkpoints
(:meth:`~lightning_kd.models.staged.StagedNet.repdistiller_names`).
"""

from __future__ import annotations

from .build import MODELS, build_network, is_pretrained
from .ensemble import CheckpointEnsemble
from .mobilenetv2 import MobileNetV2, mobilenetv2
from .resnet import (BasicBlock, BottleneckResNet, CifarResNet, ResNet50, resnet8x4, resnet20, resnet32, resnet32x4,
                     resnet56, resnet110)
from .shufflenet import ShuffleNetV1, ShuffleNetV2, shufflenet_v1, shufflenet_v2
from .small_cnn import SmallCNN, small_cnn
from .staged import StagedNet
from .vgg import CifarVGG, vgg8, vgg13
from .wrn import WideBlock, WideResNet, wrn_16_2, wrn_40_1, wrn_40_2

__all__ = [
    "MODELS",
    "build_network",
    "is_pretrained",
    "BasicBlock",
    "BottleneckResNet",
    "CheckpointEnsemble",
    "CifarResNet",
    "CifarVGG",
    "MobileNetV2",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "SmallCNN",
    "StagedNet",
    "WideBlock",
    "WideResNet",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet50",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg13",
    "mobilenetv2",
    "shufflenet_v1",
    "shufflenet_v2",
    "small_cnn",
]
