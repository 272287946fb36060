"""ResumeCheck: a resumed fit is the run its checkpoint names, with only the safe changes applied."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from lightning_kd.resume import method_name, plain

# Scheduler state that is progress (restored as it was) or follows the optimizer's LR, not the schedule.
PROGRESS = ("last_epoch", "_step_count", "_last_lr", "base_lrs", "_get_lr_called_within_step", "_is_initial",
            "verbose")


def schedule_of(scheduler) -> dict:
    return {k: plain(dict(v) if hasattr(v, "items") else v) for k, v in scheduler.state_dict().items()
            if k not in PROGRESS}


class ResumeCheck(Callback):
    """Checks a resumed fit against its checkpoint (see :mod:`lightning_kd.resume`; the method and its
    settings are checked by the module's ``on_load_checkpoint``, before its weights load): the LR schedule
    must be the checkpoint's; the optimizer's settings of this run (e.g. a lower learning rate) are
    applied to the restored optimizer, and said. Records the method in every checkpoint. Every method
    adds it through ``configure_callbacks``."""

    def __init__(self):
        self.schedules: list[dict] = []

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["lightning_kd_method"] = method_name(type(pl_module))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The schedules as this run configured them; a resumed run's are loaded from its checkpoint next.
        self.schedules = [schedule_of(c.scheduler) for c in trainer.lr_scheduler_configs]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        for config, configured in zip(trainer.lr_scheduler_configs, self.schedules):
            restored = schedule_of(config.scheduler)
            if restored != configured:
                changed = {k: (restored.get(k), configured.get(k)) for k in restored if restored.get(k) != configured.get(k)}
                raise ValueError(
                    f"ckpt_path {trainer.ckpt_path!r} was trained with another LR schedule than this run's "
                    f"({'; '.join(f'{k}: {a} in the checkpoint, {b} now' for k, (a, b) in changed.items())}; a "
                    f"changed trainer.max_epochs moves the milestones of a relative schedule). A resumed run keeps "
                    f"its schedule: resume with the run's settings, or start a new run without ckpt_path.")
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                for key, value in optimizer.defaults.items():  # this run's configured settings
                    if key == "lr":
                        apply_learning_rate(group, value)
                    elif key in group and group[key] != value and isinstance(value, (bool, int, float)):
                        rank_zero_info(f"Resuming with {key}={value} from this run's optimizer settings "
                                       f"(the checkpoint's run used {group[key]}).")
                        group[key] = value
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in config.scheduler.optimizer.param_groups]


def apply_learning_rate(group: dict, lr: float) -> None:
    """Scale a restored param group's schedule to a new initial learning rate."""
    initial = group.get("initial_lr", group["lr"])
    if initial == lr:
        return
    rank_zero_info(f"Resuming with lr={lr} from this run's optimizer settings (the checkpoint's run used "
                   f"{initial}); the schedule continues from there.")
    group["lr"] = group["lr"] * lr / initial if initial else lr
    if "initial_lr" in group:
        group["initial_lr"] = lr
