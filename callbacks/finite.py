"""FiniteCheck: a NaN or Inf loss stops the run, naming the term and the step, before it reaches the
weights or a checkpoint."""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor


class FiniteCheck(Callback):
    """Checks the loss terms of every training step for NaN/Inf.

    Reads ``pl_module.loss_terms`` (the unweighted terms and their weighted sum, set by
    :meth:`~lightning_kd.base.StudentModule.weighted_total`) before each backward pass. A failed
    check raises ``FloatingPointError`` naming the first bad term and its step. The check costs a
    host-device sync, so ``every_n_steps=None`` means every step on CPU (before the backward pass,
    so a NaN never reaches the weights) and every 100 steps on an accelerator; the terms of the
    steps in between stay on the device, and pending ones are always checked at the end of each
    training epoch and before a checkpoint is written, so no checkpoint is ever saved after a
    non-finite loss. Every method adds it through ``configure_callbacks``.

    Args:
        every_n_steps: check every this many steps (None: every step on CPU, every 100 on GPU).
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
            self.raise_if_not_finite()

    def raise_if_not_finite(self) -> None:
        """One sync for all pending steps; ``FloatingPointError`` naming the first non-finite term."""
        pending, self.pending = self.pending, []
        if not pending or bool(torch.cat([values for *_, values in pending]).isfinite().all()):
            return
        for epoch, step, names, values in pending:
            bad = (~values.isfinite()).nonzero()
            if len(bad):
                raise FloatingPointError(
                    f"train/{names[int(bad[0])]} is {float(values[bad[0]])} at epoch {epoch}, global step "
                    f"{step}; training stopped before it could reach a checkpoint. Lower the learning "
                    f"rate, check the inputs and loss weights, or resume from the last checkpoint.")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raise_if_not_finite()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.raise_if_not_finite()  # raised before the file is written: the one on disk stays

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.pending.clear()
