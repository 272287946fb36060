"""Guarantees: the callbacks every method adds (README, "Guarantees"), run as one callback. Lightning calls each
of a step's half-dozen hooks on every callback (about 15 Python calls each, whether the callback uses the hook
or not); one callback instead of five saves about 350 calls a step, and only FiniteCheck acts in a step."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from lightning_kd.callbacks.finite import FiniteCheck
from lightning_kd.callbacks.resume import ResumeCheck
from lightning_kd.callbacks.rng import RNGState
from lightning_kd.callbacks.run_folder import OneRunPerFolder
from lightning_kd.callbacks.safe_checkpoints import SafeCheckpoints


class Guarantees(Callback):
    """``FiniteCheck`` (the module's own: its interval is checked when the module is built), ``RNGState``,
    ``SafeCheckpoints``, ``ResumeCheck`` and ``OneRunPerFolder``, each hook passed to them in that order (the
    order of the five callbacks it replaces). Its state in a checkpoint is RNGState's, under RNGState's key, as
    before."""

    def __init__(self, finite_check: FiniteCheck):
        self.finite_check, self.rng = finite_check, RNGState()
        self.parts = (finite_check, self.rng, SafeCheckpoints(), ResumeCheck(), OneRunPerFolder())

    def each(self, hook: str, *args) -> None:
        for part in self.parts:
            getattr(part, hook)(*args)

    state_key = RNGState.__qualname__  # Callback.state_key of RNGState: its checkpoints' key

    def state_dict(self) -> dict:
        return self.rng.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.rng.load_state_dict(state_dict)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self.finite_check.on_before_backward(trainer, pl_module, loss)  # the one part with a per-step hook

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.each("setup", trainer, pl_module, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.each("on_fit_start", trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self.each("on_train_start", trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.each("on_train_epoch_end", trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.each("on_validation_end", trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.each("on_save_checkpoint", trainer, pl_module, checkpoint)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.each("teardown", trainer, pl_module, stage)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.each("on_exception", trainer, pl_module, exception)
