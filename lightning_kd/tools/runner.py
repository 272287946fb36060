"""The one runner under the tools: build a run from a config, fit it, test its best checkpoint.

Every run is an ordinary ``lightning-kd fit -c CONFIG OVERRIDES`` built through :func:`make_cli`.
"""
from __future__ import annotations

import contextlib
import io
import json
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from lightning_kd.cli import KDCLI, config_path, make_cli


# The data settings a config's datamodule shares with ImageFolderDataModule.
CARRIED_DATA_ARGS = ("batch_size", "eval_batch_size", "pad", "flip", "train_per_class")


def data_overrides(data_root: Optional[Path], cifar_root: Optional[str], download: bool,
                   config_data: Optional[dict] = None) -> list[str]:
    """Point a config at the data the user has: an ImageFolder tree, or a torchvision CIFAR folder.
    The tree keeps the config's batch sizes and augmentation (``CARRIED_DATA_ARGS``); a config that validates on the test split (``val_size: 0``, CIFAR: the KD papers' convention)
    keeps doing so on the tree (``val_dir: test``), where ImageFolder would hold out part of train."""
    args = []
    if data_root is not None:
        args += ["--data=lightning_kd.datamodules.ImageFolderDataModule", f"--data.root={data_root}"]
        init_args = (config_data or {}).get("init_args") or {}
        # Said explicitly: a class change keeps only the init_args a config states, not its class's
        # defaults (CIFAR's pad 4 and flips would silently become ImageFolder's none).
        args += [f"--data.init_args.{key}={json.dumps(init_args[key])}" for key in CARRIED_DATA_ARGS
                 if init_args.get(key) is not None]
        if init_args.get("val_size") == 0:
            args.append("--data.init_args.val_dir=test")
    if cifar_root is not None:
        args.append(f"--data.init_args.root={cifar_root}")
    if download:
        args.append("--data.init_args.download=true")
    return args


def build(config: str | Path, *overrides: str) -> KDCLI:
    """The instantiated CLI (model, datamodule, trainer) of a config, not yet run."""
    return make_cli(["-c", str(config_path(config)), *overrides], run=False)


def parse(config: str | Path, *overrides: str) -> KDCLI:
    """The CLI of a config with its arguments parsed and nothing instantiated: :func:`resolved` reads it,
    ``cli.build_classes()`` builds it (one parse for both)."""
    return make_cli(["-c", str(config_path(config)), *overrides], run=False, instantiate=False)


def resolved(cli: KDCLI) -> dict:
    """The resolved config of a parsed CLI, as :func:`resolve` (``--print_config``) gives it."""
    return yaml.safe_load(cli.parser.dump(cli.config, skip_unset=False))


def resolve(config: str | Path, *overrides: str) -> dict:
    """The fully resolved config (includes, defaults and overrides applied) without instantiating
    anything: what ``--print_config`` prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(SystemExit):
        make_cli(["-c", str(config_path(config)), *overrides, "--print_config"], run=False)
    return yaml.safe_load(printed.getvalue())


class ValAccHistory(Callback):
    """Keeps ``val/acc`` after every validation epoch (sanity checks excluded) and the run's wall
    time. Both travel in the checkpoints, so a fit resumed from ``last.ckpt`` continues them.

    Args:
        progress: when given, a line starting with it after every validation epoch (long runs).
    """

    def __init__(self, progress: Optional[str] = None):
        self.history: list[float] = []
        self.seconds_before = 0.0  # time spent by earlier, interrupted invocations of this run
        self.start = time.perf_counter()
        self.progress = progress

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics["val/acc"]))
            if self.progress:
                print(f"{self.progress}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}, val/acc "
                      f"{100 * self.history[-1]:.2f}%, {self.seconds():.0f} s", flush=True)

    def state_dict(self) -> dict:
        return {"history": list(self.history), "seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        # Lightning also restores callbacks for `test(ckpt_path=best)`, which must not rewind the
        # fit's history to the best epoch: only a resumed fit takes the saved state over.
        self.restored = state

    def on_fit_start(self, trainer, pl_module) -> None:
        if getattr(self, "restored", None) is not None:
            self.history, self.seconds_before = list(self.restored["history"]), float(self.restored["seconds"])
            self.start, self.restored = time.perf_counter(), None


def best_checkpoint(trainer: Trainer) -> ModelCheckpoint:
    """The checkpoint callback that keeps ``best.ckpt`` (the monitored one)."""
    monitored = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    if not monitored:
        raise ValueError("the run has no monitored ModelCheckpoint, so there is no best checkpoint to test.")
    return monitored[0]


def fit_and_test(config: str | Path, *overrides: str, callbacks: Sequence[Callback] = (),
                 save_config: Optional[Path] = None, ckpt_path: Optional[Path] = None,
                 parsed: Optional[KDCLI] = None) -> tuple[float, str]:
    """Fit one config, test its best checkpoint; return (test top-1, best checkpoint path).

    ``callbacks`` join the config's own; ``save_config`` receives the fully resolved config;
    ``ckpt_path`` resumes the fit from a checkpoint of the same run; ``parsed``: this config and these
    overrides already parsed by :func:`parse` (not parsed again).
    """
    if parsed is None:
        cli = build(config, *overrides)
    else:
        cli = parsed
        cli.build_classes()
    if save_config is not None:
        Path(save_config).write_text(cli.parser.dump(cli.config, skip_none=False))
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    best = best_checkpoint(cli.trainer).best_model_path
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
    finish_wandb(cli.trainer)
    return float(result[0]["test/acc"]), best


def finish_wandb(trainer: Trainer) -> None:
    """Close the trainer's wandb runs (written out whole): the next fit in this process must not join them."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def device_name() -> str:
    """The GPU's name, or the CPU's and the torch thread count (CPU results depend on it)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"CPU: {cpu}, {torch.get_num_threads()} torch threads"
