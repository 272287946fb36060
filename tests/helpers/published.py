"""Deterministic weights for the published-checkpoint fixtures (tests/fixtures/published/).

Each tensor is a function of its key and shape only, with no random generator, so the fixture script
(run with the CRD code, outside the project) and the tests make the same tensors: a sine hash of the
element index, its frequency and phase from the SHA-256 of the key. The magnitudes keep a deep
network's activations finite: He-scaled weights, positive BN scales and variances.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch import Tensor

from lightning_kd.checkpoints import load_network_weights
from lightning_kd.datamodules import SyntheticDataModule
from lightning_kd.datamodules.base import normalize
from lightning_kd.models import build_network

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "published"
INPUT_SHAPE = (2, 3, 32, 32)
# The networks of the CRD paper's 13 CIFAR-100 pairs (Tian et al., ICLR 2020, https://arxiv.org/abs/1910.10699,
# Tables 1 and 2), by our names; their fixtures hold the CRD code's names.
NETWORKS = ["resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "ResNet50", "wrn_16_2",
            "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "MobileNetV2", "ShuffleNetV1", "ShuffleNetV2"]


def uniform(name: str, count: int) -> Tensor:
    """``count`` float64 values in [0, 1), the same for the same ``name`` on any machine."""
    digest = hashlib.sha256(name.encode()).digest()
    frequency, phase = (int.from_bytes(digest[i:i + 8], "little") / 2 ** 64 for i in (0, 8))
    index = torch.arange(1, count + 1, dtype=torch.float64)
    x = torch.sin(index * (0.5 + frequency) + 2 * math.pi * phase) * 43758.5453
    return x - torch.floor(x)


def deterministic_tensor(key: str, shape: list[int]) -> Tensor:
    """The tensor of ``key`` (a state_dict key) and ``shape``: float32, or int64 for ``num_batches_tracked``."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(int(uniform(key, 1)[0] * 1000), dtype=torch.int64)
    u = uniform(key, math.prod(shape)).reshape(shape)
    if len(shape) >= 2:  # conv / linear weight: zero mean, variance 2 / fan_in
        values = (u - 0.5) * math.sqrt(12 * 2 / math.prod(shape[1:]))
    elif key.endswith("running_var"):
        values = 0.5 + u
    elif key.endswith("weight"):  # BatchNorm scale
        values = 0.5 + 0.5 * u
    else:  # biases and running means
        values = 0.2 * (u - 0.5)
    return values.to(torch.float32)


def deterministic_state(keys_shapes: list[tuple[str, list[int]]]) -> dict[str, Tensor]:
    return {key: deterministic_tensor(key, shape) for key, shape in keys_shapes}


def fixture_input() -> Tensor:
    """The fixtures' input batch, roughly a normalized image's range."""
    return ((uniform("input", math.prod(INPUT_SHAPE)) - 0.5) * 4).reshape(INPUT_SHAPE).to(torch.float32)


def load_fixture(network: str) -> dict:
    """``{"network", "theirs", "parameters", "state_dict": [[key, shape], ...], "logits"}`` of one network."""
    return json.loads((FIXTURES / f"{network}.json").read_text())


def save_their_checkpoint(path: Path, network: str) -> dict[str, Tensor]:
    """A file as RepDistiller's ``train_teacher.py`` writes ``ckpt_epoch_240.pth`` (epoch, ``model``,
    accuracy, optimizer state) with the fixture's keys of ``network`` and their deterministic weights;
    returns that state_dict."""
    state = deterministic_state(load_fixture(network)["state_dict"])
    optimizer = {"state": {}, "param_groups": [{"lr": 0.0005, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4,
                                                "nesterov": False, "params": list(range(len(state)))}]}
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(79.42), "optimizer": optimizer}, path)
    return state


def synthetic_cifar100(sizes: int = 8) -> tuple[list[str], SyntheticDataModule]:
    """CIFAR-100-shaped synthetic data: its command-line arguments and the datamodule itself."""
    args = ["--data=lightning_kd.datamodules.SyntheticDataModule", "--data.num_classes=100",
            "--data.input_shape=[3, 32, 32]", f"--data.train_size={2 * sizes}", f"--data.val_size={sizes}",
            f"--data.test_size={sizes}", f"--data.batch_size={sizes}"]
    data = SyntheticDataModule(num_classes=100, train_size=2 * sizes, val_size=sizes, test_size=sizes)
    data.setup("fit")
    return args, data


def split(data: SyntheticDataModule, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.splits[name]
    return normalize(x, data.mean, data.std), y


def save_teacher_of(network: str, path, label: int) -> None:
    """Their checkpoint file of ``network`` whose head favours ``label`` (its deterministic weights alone
    predict one class, rarely a label of the data: the accuracies below are then not all 0)."""
    path.parent.mkdir()
    state = save_their_checkpoint(path, network)
    state["fc.bias"][label] += 100.0  # the head of their CIFAR ResNets
    torch.save({"model": state}, path)  # as mdistiller saves a student


def their_network(network: str, path) -> torch.nn.Module:
    net = build_network(network, 100)
    load_network_weights(net, path)
    return net.eval()
