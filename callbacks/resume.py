"""ResumeCheck: a resumed fit is the run its checkpoint names, with only the safe changes applied."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from lightning_kd.resume import (ACCUMULATED, apply_optimizer_settings, check_accumulation, check_schedules,
                                 method_name, schedule_of)


class ResumeCheck(Callback):
    """Checks a resumed fit against its checkpoint (the policy is :mod:`lightning_kd.resume`; the method and
    its settings are checked by the module's ``on_load_checkpoint``, before its weights load): the LR schedule
    must be the checkpoint's; the optimizer's settings of this run (e.g. a lower learning rate) are
    applied to the restored optimizer, and said. Records the method in every checkpoint, and how many batches'
    gradients were waiting for the next optimizer step (gradient accumulation): a fit is not resumed from such a
    checkpoint. Every method adds it through ``configure_callbacks``."""

    def __init__(self):
        self.schedules: list[dict] = []
        self.accumulated = 0  # training batches since the last optimizer step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        # Manual optimization (DML, IE-DML) steps its optimizers itself, every batch, and Lightning accumulates
        # nothing for it; a peer-parallel placement may step them without this hook seeing it.
        if pl_module.automatic_optimization:
            self.accumulated += 1

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        self.accumulated = 0

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["lightning_kd_method"] = method_name(type(pl_module))
        checkpoint[ACCUMULATED] = self.accumulated

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":
            check_accumulation(checkpoint, trainer.accumulate_grad_batches, trainer.ckpt_path)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The schedules as this run configured them; a resumed run's are loaded from its checkpoint next.
        self.schedules = [schedule_of(c.scheduler) for c in trainer.lr_scheduler_configs]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        check_schedules([schedule_of(c.scheduler) for c in trainer.lr_scheduler_configs], self.schedules,
                        trainer.ckpt_path)
        for optimizer in trainer.optimizers:
            apply_optimizer_settings(optimizer)
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in config.scheduler.optimizer.param_groups]
