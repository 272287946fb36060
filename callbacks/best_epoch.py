"""BestEpochSummary: the best epoch's metrics in the wandb run's summary, so a dashboard's runs table shows
each run at its best checkpoint's epoch (``best/epoch``, ``best/val/acc``, ...), not at its last."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from lightning_kd.callbacks.report import scalars


class BestEpochSummary(Callback):
    """After each validation of a fit, when the monitored metric of the run's best checkpoint (``val/acc``)
    improved, every logged scalar of that epoch goes to the wandb summary under ``best/``. A resumed fit
    starts from its checkpoint's best score."""

    def __init__(self):
        self.best = None

    @staticmethod
    def monitored(trainer: pl.Trainer):
        found = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
        return found[0] if found else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = self.monitored(trainer)
        score = checkpoint.best_model_score if checkpoint is not None else None
        self.best = None if score is None else float(score)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = self.monitored(trainer)
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or checkpoint is None or not loggers or not trainer.is_global_zero:
            return
        metrics = scalars(trainer.callback_metrics)
        value = metrics.get(checkpoint.monitor)
        if value is None:
            return
        if self.best is not None and not (value > self.best if checkpoint.mode == "max" else value < self.best):
            return
        self.best = value
        summary = {"best/epoch": trainer.current_epoch, "best/step": trainer.global_step,
                   **{f"best/{k}": v for k, v in metrics.items()}}
        for logger in loggers:
            logger.experiment.summary.update(summary)
