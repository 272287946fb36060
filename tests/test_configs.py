"""Every YAML under configs/ runs `fit` with fast_dev_run through the CLI.

Parametrized over the folder, so a new config is covered without editing this file. Data that
needs files or a network (CIFAR, ImageFolder) is swapped for synthetic data of the same shape,
and teacher checkpoints are replaced by freshly built teachers of the configured architecture.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from lightning_kd.callbacks.route import write_route
from conftest import ROOT, save_teacher
from lightning_kd.cli import make_cli
from lightning_kd.models import build_network

CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# class_path -> (num_classes, input_shape) of data that is not available offline
OFFLINE_SHAPES = {
    "lightning_kd.datamodules.CIFAR10DataModule": (10, (3, 32, 32)),
    "lightning_kd.datamodules.CIFAR100DataModule": (100, (3, 32, 32)),
    "lightning_kd.datamodules.ImageFolderDataModule": (10, (3, 32, 32)),
}
KNOWN_SHAPES = {"lightning_kd.datamodules.DigitsDataModule": (10, (1, 8, 8))}


def data_shape(cfg: dict) -> tuple[int, tuple[int, int, int]]:
    data = cfg["data"]
    wrapped = (data.get("init_args") or {}).get("source")
    if isinstance(wrapped, dict):  # a datamodule over a `source` one (ClassSplitDataModule):
        # the source's images, the wrapper's training classes
        return len(data["init_args"]["train_classes"]), data_shape({"data": wrapped})[1]
    if data["class_path"] in OFFLINE_SHAPES:
        return OFFLINE_SHAPES[data["class_path"]]
    if data["class_path"] in KNOWN_SHAPES:
        return KNOWN_SHAPES[data["class_path"]]
    args = data.get("init_args", {})
    return args.get("num_classes", 10), tuple(args.get("input_shape", (3, 32, 32)))


def offline_overrides(cfg: dict, tmp_path) -> list[str]:
    """Command-line overrides that make a config runnable offline, in a temporary folder."""
    num_classes, shape = data_shape(cfg)
    args = ["--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.devices=1",
            f"--checkpoint.dirpath={tmp_path / 'ckpt'}"]
    if cfg["data"]["class_path"] in OFFLINE_SHAPES:
        args += ["--data=lightning_kd.datamodules.SyntheticDataModule", f"--data.num_classes={num_classes}",
                 f"--data.input_shape=[{', '.join(map(str, shape))}]", "--data.train_size=16",
                 "--data.val_size=8", "--data.test_size=8"]
    wrapped = (cfg["data"].get("init_args") or {}).get("source")
    if isinstance(wrapped, dict) and wrapped["class_path"] in OFFLINE_SHAPES:
        source_classes, source_shape = OFFLINE_SHAPES[wrapped["class_path"]]
        args += ["--data.source=lightning_kd.datamodules.SyntheticDataModule", f"--data.source.num_classes={source_classes}",
                 f"--data.source.input_shape=[{', '.join(map(str, source_shape))}]",
                 "--data.source.train_size=32", "--data.source.val_size=8", "--data.source.test_size=16"]
    args.append("--data.batch_size=8")
    model_args = cfg["model"].get("init_args", {})
    if model_args.get("teacher_ckpt"):
        path = save_teacher(tmp_path / "teacher.pt", model_args["teacher"], num_classes, shape[0])
        args.append(f"--model.init_args.teacher_ckpt={path}")
    for callback in (cfg.get("trainer") or {}).get("callbacks") or []:
        if callback.get("class_path", "").endswith("RouteConstrainedTeacher"):  # RCO reads a teacher route:
            # its route_dir (relative to the cwd, tmp_path), else the route folder next to teacher_ckpt
            route_dir = Path((callback.get("init_args") or {}).get("route_dir") or "route")
            if not route_dir.is_absolute():
                save_route(tmp_path / route_dir, model_args["teacher"], num_classes, shape[0])
    return args


def save_route(folder: Path, spec, num_classes: int, in_channels: int, anchors: int = 2) -> None:
    """A recorded teacher route (lightning_kd.callbacks.RouteRecorder's layout) of freshly built teachers."""
    states = []
    for seed in range(anchors):
        torch.manual_seed(seed)
        states.append(build_network(spec, num_classes, in_channels).state_dict())
    write_route(folder, states)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_config_fits(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written under runs/ stays in the temporary folder
    cfg = yaml.safe_load(config.read_text())
    cli = make_cli(["fit", "-c", str(config), *offline_overrides(cfg, tmp_path)])
    assert cli.trainer.global_step >= 1, "no optimizer step was taken"
    loss = cli.trainer.callback_metrics["train/loss"]
    assert math.isfinite(float(loss))
    assert cli.model.num_classes == data_shape(cfg)[0]
    assert cli.model.input_shape == data_shape(cfg)[1]
    logits = cli.model.student(torch.zeros(2, *cli.model.input_shape))
    assert logits.shape == (2, cli.model.num_classes)


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(ROOT / "configs")) for c in CONFIGS])
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]
