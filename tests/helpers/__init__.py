"""What the tests share: one trainer factory, one tiny network, teacher files and method builders.

Tests import from here (never from each other); ``conftest.py`` holds only the fixtures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[2]
DIGITS_SHAPE = (1, 8, 8)
TINY_CNN = {"name": "small_cnn", "width": 4}
MARKER_VARIABLE = "LIGHTNING_KD_TEST_MARKER"  # the file helpers.payload writes when imported or called
# Arguments that let a method's default constructor finish a 2-epoch digits run (both stages; fitting data).
SHORT_RUN_ARGS = {"FSP": {"stage1_fraction": 0.5}, "IEKD": {"stage1_fraction": 0.5},
                  "CRD": {"negatives": 64}}  # the digits' training set has 1,257 samples, not CRD's 16,384

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")


def trainer(tmp_path: Optional[Path] = None, **kwargs) -> pl.Trainer:
    """A CPU Trainer for short test fits: 1 epoch of 2 batches, no validation, logger, checkpoints,
    progress bar or summary; any Trainer argument overrides these."""
    options = dict(max_epochs=1, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", devices=1,
                   logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, default_root_dir=tmp_path)
    options.update(kwargs)
    return pl.Trainer(**options)


class RecordingLogger(pl.loggers.Logger):
    """A logger that keeps ``(step, {name: float})`` of every call Lightning makes to log metrics."""

    name, version = "recording", 0

    def __init__(self):
        super().__init__()
        self.rows = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def run_ddp_script(run, *args) -> None:
    """A DDP test script's body (one process per rank, launched by Lightning), then the gloo process group
    shut down: a group left to the interpreter's exit has crashed it now and then (exit 134)."""
    try:
        run(*args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def fit_tiny_mlps_on_two_processes(cls, out_dir: Path, lr: float, **kwargs) -> None:
    """A DDP test script's fit: ``cls`` with tiny_mlp student and teacher (the teacher saved once, by rank 0, in
    ``out_dir``), SGD (momentum 0.9, weight decay 5e-4) at ``lr``, 3 steps of 2 processes x 8 synthetic
    8x8 images; ``kwargs`` go to ``cls``."""
    from functools import partial

    from lightning_kd.datamodules import SyntheticDataModule

    teacher_path = out_dir / "teacher.pt"
    if not teacher_path.exists():  # the launcher re-runs the script for rank 1: keep rank 0's file
        save_teacher(teacher_path, "helpers.nets.tiny_mlp", seed=123)
    pl.seed_everything(0)
    model = cls(student="helpers.nets.tiny_mlp", teacher="helpers.nets.tiny_mlp", teacher_ckpt=str(teacher_path),
                num_classes=10, input_shape=(1, 8, 8),
                optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4), **kwargs)
    data = SyntheticDataModule(num_classes=10, input_shape=(1, 8, 8), train_size=64, val_size=16, test_size=16,
                               batch_size=8, pad=1)
    trainer(out_dir, devices=2, strategy="ddp", limit_train_batches=3).fit(model, datamodule=data)


def save_teacher(path: Path, spec, num_classes: int = 10, in_channels: int = 1, seed: int = 0) -> str:
    """Build a (randomly initialised) network and save it as a plain state_dict file."""
    from lightning_kd.models import build_network

    torch.manual_seed(seed)
    torch.save(build_network(spec, num_classes, in_channels).state_dict(), path)
    return str(path)


def teacher_methods() -> list[str]:
    """Names in ``lightning_kd.methods.__all__`` of the methods that distill from a teacher."""
    import lightning_kd.methods as methods
    from lightning_kd.base import DistillationModule

    return [name for name in methods.__all__ if issubclass(getattr(methods, name), DistillationModule)]


def build_method(name: str, teacher_ckpt: str, cls=None, **kwargs):
    """A teacher-based method with its default arguments on digits: small_cnn width 4 student and
    teacher (equal widths, which FSP needs), plus :data:`SHORT_RUN_ARGS`."""
    import lightning_kd.methods as methods

    args = dict(student=TINY_CNN, teacher=TINY_CNN, teacher_ckpt=teacher_ckpt, num_classes=10,
                input_shape=DIGITS_SHAPE, **SHORT_RUN_ARGS.get(name, {}))
    args.update(kwargs)
    return (cls or getattr(methods, name))(**args)


def ie_loss_by_hand(factor: torch.Tensor, target: torch.Tensor) -> float:
    """IE-KD's inheritance loss written out sample by sample, element by element, in float64: the mean
    absolute difference of the per-sample L2-normalised, flattened factors."""
    total, count = 0.0, 0
    for f, t in zip(factor.double(), target.double()):
        f, t = f.flatten(), t.flatten()
        f, t = f / f.pow(2).sum().sqrt(), t / t.pow(2).sum().sqrt()
        total += float((f - t).abs().sum())
        count += f.numel()
    return total / count


def snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_state(a, b, what: str = "state") -> None:
    """Equal nested dicts/lists of tensors and plain values, tensors bit for bit."""
    assert type(a) is type(b), what
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_same_state(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    else:
        assert a == b, what


class Interrupted(Exception):
    """A simulated kill of the process."""


class KillAtStep(pl.Callback):
    """Raises :class:`Interrupted` when a training batch starts at ``global_step == step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupted(f"killed at global step {self.step}")


class SaveAfterBatches(pl.Callback):
    """Saves ``<folder>/batch<i>.ckpt`` after each training batch ``i`` of ``batches`` (epoch 0)."""

    def __init__(self, folder, batches):
        self.folder, self.batches = folder, batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx in self.batches:
            trainer.save_checkpoint(self.folder / f"batch{batch_idx}.ckpt")


class RecordLR(pl.Callback):
    """The learning rate every training epoch starts with, by epoch (``RecordLR.seen``, a class attribute,
    so that a test can read what a callback built by the CLI saw)."""

    seen: dict = {}

    def on_train_epoch_start(self, trainer, pl_module):
        RecordLR.seen[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]


def write_shards(root: Path, images: list, classes=("a", "b")) -> str:
    """A shard folder as StreamingImageDataModule reads it, written in this process with litdata's writer:
    ``train`` and ``val`` splits of records ``{index, label, image}`` whose ``image`` is each of ``images``
    in turn (encoded bytes, as the converter writes; any other object makes litdata declare another format)."""
    import json

    from litdata.streaming.writer import BinaryWriter

    for split in ("train", "val"):
        writer = BinaryWriter(str(root / split), chunk_bytes="1MB")
        for i, image in enumerate(images):
            writer[i] = {"index": i, "label": i % len(classes), "image": image}
        writer.done()
        writer.merge()
    splits = {split: {"count": len(images), "fingerprint": "written by the test"} for split in ("train", "val")}
    (root / "shards.json").write_text(json.dumps({"format": 1, "classes": list(classes), "splits": splits}))
    return str(root)


def png_bytes(size: int = 8, color=(200, 10, 10)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()
