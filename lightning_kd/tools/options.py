"""The options the commands over a config folder share (results, born_again): the data, the run length,
overrides, reuse and a note; their checks, and the overrides every run gets."""
from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

from lightning_kd.cli import config_path


def prepare_data_root(data_root: Path, out_dir: Path) -> Path:
    """A ``.tar.gz`` of an ImageFolder tree (as in ``shared/data``) is extracted once into ``out_dir``."""
    if not data_root.name.endswith(".tar.gz"):
        return data_root
    target = out_dir / "data"
    if not target.is_dir():
        with tarfile.open(data_root) as archive:
            archive.extractall(target, filter="data")
    tops = [d for d in target.iterdir() if d.is_dir()]
    if len(tops) != 1:
        raise ValueError(f"{data_root} should hold one top folder (<name>/train, <name>/test), found {tops}.")
    return tops[0]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the tools over a config folder share (data, length, overrides, reuse, a note); see
    :func:`check_run_arguments` (which also checks the tool's own ``--configs``) and :func:`run_overrides`."""
    parser.add_argument("--epochs", type=int, default=None,
                        help="trainer.max_epochs of every run (the configs' schedules are fractions of it); "
                             "default: the configs' own")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="ImageFolder tree (root/{train,test}/<class>/...) or a .tar.gz of one, "
                             "read with lightning_kd.datamodules.ImageFolderDataModule")
    parser.add_argument("--cifar-root", default=None, help="torchvision CIFAR folder (data.init_args.root)")
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR (needs network)")
    parser.add_argument("--limit-train-batches", type=int, default=None, help="cap batches per epoch (smoke runs)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra CLI override for every run, e.g. --override=--trainer.precision=bf16-mixed")
    parser.add_argument("--wandb", action="store_true", help="keep the configs' wandb logger (default: no logger)")
    parser.add_argument("--rerun", action="store_true",
                        help="train every run again (default: reuse the recorded runs of unchanged config + overrides)")
    parser.add_argument("--note", default="", help="a paragraph placed under the report's header")


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks the options, and resolves ``--configs`` as ``lightning-kd fit -c`` does (a folder here, else
    the shipped one of that name)."""
    args.configs = config_path(args.configs)
    if not args.configs.is_dir():
        parser.error(f"--configs {args.configs} is not a folder here nor a shipped one (`lightning-kd list` "
                     f"names them).")
    if args.data_root is not None and args.cifar_root is not None:
        parser.error("--data-root (ImageFolder) and --cifar-root (torchvision CIFAR) exclude each other; pick one.")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}.")


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of :func:`add_run_arguments` that every run gets (the data's are per config)."""
    common = ["--trainer.enable_progress_bar=false", "--summary=false", *args.override]
    if not args.wandb:
        common.append("--trainer.logger=false")
    if args.limit_train_batches is not None:
        common.append(f"--trainer.limit_train_batches={args.limit_train_batches}")
    if args.epochs is not None:
        common.append(f"--trainer.max_epochs={args.epochs}")
    return common
