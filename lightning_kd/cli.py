"""``lightning-kd fit|validate|test|predict -c CONFIG``: the LightningCLI entry point.

The model (a method) and the data are chosen by ``class_path`` in the YAML. ``num_classes`` and
``input_shape`` are read off the instantiated datamodule and linked into the model, so a config
never states them twice. Checkpoints: best on ``val/acc`` (``best.ckpt``) and ``last.ckpt``.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pytorch_lightning import LightningDataModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from lightning_kd.base import DistillationModule
from lightning_kd.checkpoints import load_checkpoint_file

# The default logger: wandb, offline (a real run directory; `wandb sync runs/wandb/offline-run-*`
# uploads it later). `--trainer.logger.init_args.offline false` logs live.
DEFAULT_LOGGER = {
    "class_path": "pytorch_lightning.loggers.WandbLogger",
    "init_args": {"project": "lightning_kd", "save_dir": "runs", "offline": True},
}


class SaveConfigToRun(SaveConfigCallback):
    """Save the full resolved config into the wandb run (as its config and as config.yaml)."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(yaml.safe_load(text), allow_val_change=True)
                Path(logger.experiment.dir, "lightning_config.yaml").write_text(text)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is rewritten at every epoch's save point.

    Since Lightning 2.5, a monitored ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt``
    only in epochs that also save a new best, so after a plateau ``last.ckpt`` is several
    epochs old and a resume from it silently loses them. Here ``last.ckpt`` always holds the
    latest epoch (written once per step, whichever hook gets there first).
    """

    _last_written_step = -1

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if self._last_written_step == trainer.global_step and self.last_model_path:
            return
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_step = trainer.global_step


class KDCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "best",
            "checkpoint.save_last": True,
            "checkpoint.auto_insert_metric_name": False,
            "trainer.logger": DEFAULT_LOGGER,
        })

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters before anything else; our loader first,
        # for a clear error on an empty, truncated or unsafe file (weights_only=True either way).
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            load_checkpoint_file(ckpt_path, what="ckpt_path")
        super()._parse_ckpt_path()


def make_cli(args=None, run: bool = True) -> KDCLI:
    """Build (and by default run) the CLI; ``args`` as a list replaces ``sys.argv``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    return KDCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=SaveConfigToRun,
        save_config_kwargs={"save_to_log_dir": False},
        args=args,
        run=run,
    )


def main(args=None) -> None:
    make_cli(args)


if __name__ == "__main__":
    main()
