"""Fixtures shared by the tests (the helpers they share live in tests/helpers). Everything runs on CPU;
wandb never touches the network."""
from __future__ import annotations

import os

import pytest

from helpers import TINY_CNN, save_teacher

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def digits_teacher(tmp_path) -> str:
    """A state_dict file of a SmallCNN(width=16) teacher for the digits data."""
    return save_teacher(tmp_path / "teacher.pt", {"name": "small_cnn", "width": 16})


@pytest.fixture
def tiny_teacher(tmp_path) -> str:
    """A state_dict file of a small_cnn width 4 teacher for the digits data (see helpers.build_method)."""
    return save_teacher(tmp_path / "tiny_teacher.pt", TINY_CNN, seed=1)
