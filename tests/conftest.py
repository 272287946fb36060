"""Shared test helpers. Everything runs on CPU; wandb never touches the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parent.parent


def save_teacher(path: Path, spec, num_classes: int, in_channels: int, seed: int = 0) -> str:
    """Build a (randomly initialised) teacher and save it as a plain state_dict file."""
    from lightning_kd.models import build_network

    torch.manual_seed(seed)
    net = build_network(spec, num_classes, in_channels)
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture
def digits_teacher(tmp_path) -> str:
    """A state_dict file of a SmallCNN(width=16) teacher for the digits data."""
    return save_teacher(tmp_path / "teacher.pt", {"name": "small_cnn", "width": 16}, 10, 1)
