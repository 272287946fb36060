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


# ----------------------------------------------------------------------------- every method
# Arguments that let a method's default constructor finish a 2-epoch digits run in both stages.
SHORT_RUN_ARGS = {"FSP": {"stage1_epochs": 1}, "IEKD": {"stage1_epochs": 1}}
DIGITS_SHAPE = (1, 8, 8)
TINY_CNN = {"name": "small_cnn", "width": 4}


def teacher_methods() -> list[str]:
    """Names in ``lightning_kd.methods.__all__`` of the methods that distill from a teacher."""
    import lightning_kd.methods as methods
    from lightning_kd.base import DistillationModule

    return [name for name in methods.__all__ if isinstance(getattr(methods, name), type)
            and issubclass(getattr(methods, name), DistillationModule) and getattr(methods, name).uses_teacher]


def build_method(name: str, teacher_ckpt: str, cls=None, **kwargs):
    """A teacher-based method with its default arguments on digits: small_cnn width 4 student and
    teacher (equal widths, which FSP needs), plus :data:`SHORT_RUN_ARGS`."""
    import lightning_kd.methods as methods

    args = dict(student=TINY_CNN, teacher=TINY_CNN, teacher_ckpt=teacher_ckpt, num_classes=10,
                input_shape=DIGITS_SHAPE, **SHORT_RUN_ARGS.get(name, {}))
    args.update(kwargs)
    return (cls or getattr(methods, name))(**args)


@pytest.fixture
def tiny_teacher(tmp_path) -> str:
    """A state_dict file of a small_cnn width 4 teacher for the digits data (see build_method)."""
    return save_teacher(tmp_path / "tiny_teacher.pt", TINY_CNN, 10, 1, seed=1)


def quick_trainer(tmp_path, **kwargs):
    """A CPU Trainer for short test fits: 1 epoch, no validation, logger, checkpoints or bars."""
    import pytorch_lightning as pl

    options = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", devices=1,
                   logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, default_root_dir=tmp_path)
    options.update(kwargs)
    return pl.Trainer(**options)
