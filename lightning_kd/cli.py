"""``lightning-kd fit|validate|test|predict -c CONFIG``: the LightningCLI entry point.

The model (a method) and the data are chosen by ``class_path`` in the YAML. ``num_classes`` and
``input_shape`` are read off the instantiated datamodule and linked into the model, so a config
never states them twice. Checkpoints: two stock ``ModelCheckpoint``s in ``checkpoint.dirpath``,
``best.ckpt`` (highest ``val/acc``) and ``last.ckpt`` (rewritten at every save point).
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml
from pytorch_lightning import LightningDataModule, Trainer, seed_everything
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

import lightning_kd.datamodules  # noqa: F401 - imported, their classes answer to short names (--model KD)
import lightning_kd.methods  # noqa: F401
from lightning_kd.base import StudentModule
from lightning_kd.callbacks.best_epoch import BestEpochSummary
from lightning_kd.callbacks.report import RunReport
from lightning_kd.callbacks.run_folder import start_over
from lightning_kd.checkpoints import load_checkpoint_file
from lightning_kd.cli_messages import KDArgumentParser, catalogue, is_list_command, report
from lightning_kd.configs import SHIPPED_CONFIGS
from lightning_kd.naming import run_name
from lightning_kd.resume import SAFE_CHANGES, check_method, check_resume, imported
from lightning_kd.threads import choose_threads
from lightning_kd.trust import check_class_paths, named_by_user, reading, strings

# The default logger: wandb, offline (a real run directory; `wandb sync runs/wandb/offline-run-*`
# uploads it later). `--trainer.logger.init_args.offline false` logs live.
DEFAULT_LOGGER = {
    "class_path": "pytorch_lightning.loggers.WandbLogger",
    "init_args": {"project": "lightning_kd", "save_dir": "runs", "offline": True},
}


class SaveConfigToRun(SaveConfigCallback):
    """Save the full resolved config into the wandb run (as its config and as config.yaml) and tag the run
    with its method."""

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers:  # nothing to save it into: no dump (it costs as much as a parse)
            return
        text = self.parser.dump(self.config, skip_none=False)
        for logger in wandb_loggers:
            logger.experiment.tags = tuple(sorted({*logger.experiment.tags, type(pl_module).__name__}))
            logger.experiment.config.update(yaml.safe_load(text), allow_val_change=True)
            Path(logger.experiment.dir, "lightning_config.yaml").write_text(text)


class KDCLI(LightningCLI):
    def __init__(self, *args, instantiate: bool = True, **kwargs):
        # instantiate=False: parse only (the tools read the resolved config first: a recorded run is reused
        # without building anything); build_classes() then builds from this same parse.
        self.deferred = not instantiate
        super().__init__(*args, **kwargs)

    def build_classes(self) -> None:
        """Instantiate a CLI made with ``instantiate=False``: LightningCLI's own steps, seeded again as they are
        right after parsing (_set_seed has stored the seed it drew in the config)."""
        self.deferred = False
        seed = self.config.get("seed_everything")
        if seed is not False and seed is not None:
            seed_everything(seed, workers=True, verbose=False)
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        # best.ckpt follows val/acc; last.ckpt is a second, unmonitored checkpoint rewritten at every
        # save point (a monitored ModelCheckpoint refreshes its save_last copy only with a new best).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "best",
            "checkpoint.auto_insert_metric_name": False,
            "last_checkpoint.filename": "last",
            "last_checkpoint.enable_version_counter": False,
            "trainer.logger": DEFAULT_LOGGER,
        })
        parser.add_argument("--summary", type=bool, default=True,
                            help="print a summary at the end of fit and test (metrics.csv and predict's "
                                 "predictions.csv beside the checkpoints are written either way)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: start over in a checkpoint folder that holds another run's checkpoints "
                                 "(its *.ckpt files and route/ are deleted once the run is built; never the run's own "
                                 "teacher files)")
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch threads per process on the CPU (default: OMP_NUM_THREADS if set, else the "
                                 "cores divided by this run's processes and those already busy; said in the log)")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer.callbacks += [RunReport(print_summary=config.get("summary", True)), BestEpochSummary()]
        return trainer

    def parse_arguments(self, parser, args) -> None:
        # `args` is the command line, as a list when built from Python (make_cli).
        self.config = parser.parse_args(args)
        self.kept, self.checked_resume, self.source = {}, None, None
        subcommand = self.config.get("subcommand")
        model = (self.config[subcommand] if subcommand else self.config).get("model")
        self.named = strings(model.get("init_args")) if model else set()  # what the user named (lightning_kd.trust)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or "://" in str(ckpt_path) or ckpt_path in ("best", "last"):
            return
        # LightningCLI replaces the model's config with --ckpt_path's hyperparameters next (right
        # after this method); check them against what was asked for first, and keep the safe changes.
        checkpoint = load_checkpoint_file(ckpt_path, what="ckpt_path")
        self.source = where = f"ckpt_path {ckpt_path!r}"
        method = imported(model.class_path) if model else None
        check_class_paths(checkpoint, where, method, self.named)  # before jsonargparse imports any of them
        if method is None:
            return
        hparams = model.init_args.as_dict() if model.get("init_args") else {}
        if subcommand == "fit":
            check_resume(checkpoint, method, hparams, where)
            self.checked_resume = str(ckpt_path)
        else:
            check_method(checkpoint, method, where)
        self.kept = {k: copy.deepcopy(model.init_args[k]) for k in SAFE_CHANGES if k in hparams}

    def instantiate_classes(self) -> None:
        if self.deferred:
            return
        # The networks --ckpt_path's hyper-parameters name are built from trusted names only (lightning_kd.trust).
        with named_by_user(self.named), reading(self.source):
            super().instantiate_classes()

    def before_instantiate_classes(self) -> None:
        if self.deferred:
            return
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        for key, value in self.kept.items():  # the safe changes of a resume (see lightning_kd.resume)
            config.model.init_args[key] = value
        trainer = config.trainer
        if str(trainer.get("accelerator")) == "cpu" or not torch.cuda.is_available():
            devices = trainer.get("devices")
            choose_threads(config.get("threads"), devices if isinstance(devices, int) and devices > 0 else 1)
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            # wandb's service process outlives a run: given a relative save_dir, a later run of this
            # process started from another working directory loses its event file. Anchor it here.
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            is_wandb = init_args is not None and str(logger.get("class_path")).endswith("WandbLogger")
            if is_wandb and not init_args.get("name") and config.get("model"):  # method, pair, seed
                init_args.name = run_name(config.model.as_dict(), config.get("seed_everything"))
            if is_wandb and not init_args.get("group") and os.environ.get("WANDB_RUN_GROUP"):
                # Said explicitly: wandb reads its environment once per process (until wandb.teardown), so a
                # group set after an earlier run of this process (the tools' wandb_group) would be ignored.
                init_args.group = os.environ["WANDB_RUN_GROUP"]
            if init_args is not None and init_args.get("save_dir"):
                init_args.save_dir = str(Path(init_args.save_dir).absolute())

    def after_instantiate_classes(self) -> None:
        if self.deferred:
            return
        super().after_instantiate_classes()
        if self.checked_resume is not None:  # checked in parse_arguments: the module need not check it again
            self.model.resume_checked = self.checked_resume
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        # No subcommand: built by the tools (run=False), which fit it. --overwrite deletes only now, with the
        # config parsed and the model, data and teacher built, and never the run's own inputs.
        if subcommand in ("fit", None) and config.get("overwrite") and config.checkpoint.dirpath:
            folder = Path(config.checkpoint.dirpath)
            ckpt_path = config.get("ckpt_path")
            resumed = ckpt_path and Path(ckpt_path).resolve().parent == folder.resolve()
            if folder.is_dir() and not resumed:  # --overwrite: this run starts over in its folder
                start_over(folder, run_inputs(self.model, self.trainer))


def run_inputs(model, trainer: Trainer) -> list[Path]:
    """The files a run reads as teacher: its teacher's (teacher_ckpt, ensemble members), an ensemble student's
    members and the route folders its callbacks name."""
    files = [Path(f["path"]) for f in getattr(getattr(model, "teacher", None), "files", {}).values()]
    files += [Path(p) for p in getattr(getattr(model, "student", None), "paths", ())]
    return files + [Path(c.route_dir) for c in trainer.callbacks if getattr(c, "route_dir", None) is not None]

def config_path(path: str | Path) -> Path:
    """``path`` if it exists, else the shipped config (file or folder) of that name:
    ``configs/quickstart/kd.yaml``, ``quickstart/kd.yaml`` and ``configs/quickstart`` work from any
    working directory."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    relative = path.relative_to("configs") if path.parts[:1] == ("configs",) else path
    shipped = SHIPPED_CONFIGS / relative
    return shipped if shipped.exists() and relative.parts else path


def with_shipped_configs(args: list[str]) -> list[str]:
    """``args`` with every ``-c``/``--config`` file resolved by :func:`config_path`."""
    out, follows_flag = [], False
    for arg in args:
        if follows_flag:
            arg = str(config_path(arg))
        elif arg.startswith("--config="):
            arg = "--config=" + str(config_path(arg.split("=", 1)[1]))
        follows_flag = arg in ("-c", "--config")
        out.append(arg)
    return out


HELP_PACKAGES = {"--model.help": lightning_kd.methods, "--data.help": lightning_kd.datamodules}


def with_full_help_names(args: list[str]) -> list[str]:
    """``--model.help KD`` -> ``--model.help lightning_kd.methods.KD`` (jsonargparse wants the import path)."""
    out = list(args)
    for i, arg in enumerate(out):
        flag, _, value = arg.partition("=")
        package = HELP_PACKAGES.get(flag)
        if package is None:
            continue
        if not value and i + 1 < len(out):
            i, value = i + 1, out[i + 1]
            flag = ""
        if "." not in value and hasattr(package, value):
            out[i] = (f"{flag}=" if flag else "") + f"{package.__name__}.{value}"
    return out


def make_cli(args=None, run: bool = True, instantiate: bool = True) -> KDCLI:
    """Build (and by default run) the CLI; ``args`` as a list replaces ``sys.argv``. ``instantiate=False``
    (with ``run=False``) only parses: see :meth:`KDCLI.build_classes`."""
    os.environ.setdefault("WANDB_SILENT", "true")
    args = with_full_help_names(with_shipped_configs(sys.argv[1:] if args is None else list(args)))
    return KDCLI(
        StudentModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=SaveConfigToRun,
        save_config_kwargs={"save_to_log_dir": False},
        parser_class=KDArgumentParser,
        parser_kwargs={"prog": "lightning-kd",
                       "description": "Knowledge distillation with Lightning. `lightning-kd list` names the "
                                       "methods, networks, datamodules and shipped configs."},
        args=args,
        run=run,
        instantiate=instantiate,
    )


def main(args=None) -> None:
    """The ``lightning-kd`` command: ``list``, or a LightningCLI subcommand whose library errors are
    printed alone (see :mod:`lightning_kd.cli_messages`)."""
    args = sys.argv[1:] if args is None else list(args)
    if is_list_command(args):
        print(catalogue())
        return
    try:
        make_cli(args)
    except Exception as err:  # noqa: BLE001 - only the library's own errors are shortened
        if not report(err):
            raise
        sys.exit(1)


if __name__ == "__main__":
    main()
