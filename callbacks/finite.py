"""FiniteCheck: a NaN or Inf loss, or a non-finite weight, stops the run before it reaches the weights or
a checkpoint, naming the term (or tensor) and the step and the last good checkpoint on disk."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from lightning_kd.checkpoints import load_checkpoint_file


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    """A sentence naming the newest checkpoint this run's ModelCheckpoints wrote (those on disk are good:
    a checkpoint with a non-finite loss or tensor is never written)."""
    paths = {Path(p) for c in trainer.checkpoint_callbacks for p in (c.best_model_path, c.last_model_path) if p}
    paths = sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not paths:
        return "No checkpoint of this run is on disk yet: start over with a lower learning rate."
    try:
        saved = load_checkpoint_file(paths[-1])
        when = f" (epoch {saved['epoch']}, global step {saved['global_step']})"
    except (ValueError, KeyError, OSError):
        when = ""
    return (f"Nothing was written after it; the last good checkpoint on disk is {str(paths[-1])!r}{when}: "
            f"resume from it (--ckpt_path) with a lower learning rate, or start over.")


class FiniteCheck(Callback):
    """Checks the loss terms of every training step, and every checkpoint's tensors, for NaN/Inf.

    Reads ``pl_module.loss_terms`` (the unweighted terms and their weighted sum, set by
    :meth:`~lightning_kd.base.StudentModule.weighted_total`) before each backward pass. A failed
    check raises ``FloatingPointError`` naming the first bad term, its step and the last good
    checkpoint on disk. The check costs a host-device sync, so ``every_n_steps=None`` means every
    step on CPU (before the backward pass, so a NaN never reaches the weights) and every 100 steps on
    an accelerator; the terms of the steps in between stay on the device, and pending ones are always
    checked at the end of each training epoch and before a checkpoint is written. Finite losses can
    still end in non-finite weights (a diverging step); so before a checkpoint is written every one
    of its floating tensors (parameters, BatchNorm statistics) is checked, with one host-device sync,
    and a non-finite one stops the run instead of reaching the disk. Every method adds this callback
    through ``configure_callbacks``.

    Args:
        every_n_steps: check the loss terms every this many steps (None: every step on CPU, every 100 on GPU).
    """

    def __init__(self, every_n_steps: Optional[int] = None):
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ValueError(f"check_finite_every_n_steps must be an integer >= 1 or None (every step on "
                             f"CPU, every 100 on GPU), got {every_n_steps!r}.")
        self.every_n_steps = every_n_steps
        self.pending: list[tuple[int, int, list[str], Tensor]] = []  # (epoch, step, names, values)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        terms = getattr(pl_module, "loss_terms", None) or {"loss": loss}
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        self.pending.append((trainer.current_epoch, trainer.global_step, list(terms), values))
        every = self.every_n_steps or (1 if pl_module.device.type == "cpu" else 100)
        if len(self.pending) >= every:
            self.raise_if_not_finite(trainer)

    def raise_if_not_finite(self, trainer: pl.Trainer) -> None:
        """One sync for all pending steps; ``FloatingPointError`` naming the first non-finite term."""
        pending, self.pending = self.pending, []
        if not pending or bool(torch.cat([values for *_, values in pending]).isfinite().all()):
            return
        for epoch, step, names, values in pending:
            bad = (~values.isfinite()).nonzero()
            if len(bad):
                raise FloatingPointError(
                    f"train/{names[int(bad[0])]} is {float(values[bad[0]])} at epoch {epoch}, global step "
                    f"{step}; training stopped. {last_good_checkpoint(trainer)} Check the inputs and loss "
                    f"weights too.")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raise_if_not_finite(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Raised before the file is written: the checkpoints on disk stay as they are.
        self.raise_if_not_finite(trainer)
        tensors = [(k, v) for k, v in checkpoint["state_dict"].items() if v.is_floating_point()]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(v).all() for _, v in tensors])
        if bool(finite.all()):
            return
        bad = [k for (k, _), ok in zip(tensors, finite.tolist()) if not ok]
        raise FloatingPointError(
            f"refused to write a checkpoint at epoch {trainer.current_epoch}, global step {trainer.global_step}: "
            f"{len(bad)} of its {len(tensors)} tensors hold NaN/Inf (e.g. {bad[:3]}) although every loss term "
            f"checked was finite: the weights diverged. {last_good_checkpoint(trainer)}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.pending.clear()
