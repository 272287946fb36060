"""The shipped configs: every YAML parses, every distinct recipe fits through the CLI, and the
shared blocks compose as documented.

Every YAML under configs/ (the shared blocks of ``_base`` excepted) is parsed with ``--print_config``.
One ``fast_dev_run`` fit runs per distinct config shape: the CIFAR-100 files are the CIFAR-10
recipes on other data (they include them), which ``test_cifar100_is_the_cifar10_recipe`` checks, so
they are not fitted again. Data that needs files or a network (CIFAR, ImageFolder) is swapped for
synthetic data of the same shape, and teacher checkpoints for freshly built teachers.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import ROOT, save_teacher
from lightning_kd.callbacks.route import write_route
from lightning_kd.cli import make_cli
from lightning_kd.models import build_network, is_pretrained
from lightning_kd.tools.runner import resolve

CONFIG_ROOT = ROOT / "configs"
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if "_base" not in p.parts)
FITTED = [p for p in CONFIGS if p.parent.name != "cifar100"]
# class_path -> (num_classes, input_shape) of data that is not available offline
OFFLINE_SHAPES = {
    "lightning_kd.datamodules.CIFAR10DataModule": (10, (3, 32, 32)),
    "lightning_kd.datamodules.CIFAR100DataModule": (100, (3, 32, 32)),
    "lightning_kd.datamodules.ImageFolderDataModule": (10, (3, 32, 32)),
    "lightning_kd.datamodules.StreamingImageDataModule": (1000, (3, 64, 64)),  # ImageNet, at 64 px to be quick
}
KNOWN_SHAPES = {"lightning_kd.datamodules.DigitsDataModule": (10, (1, 8, 8))}


def name(path: Path) -> str:
    return str(path.relative_to(CONFIG_ROOT))


def data_shape(data: dict) -> tuple[int, tuple[int, int, int]]:
    args = data.get("init_args") or {}
    if isinstance(args.get("source"), dict):  # a datamodule over a `source` one (ClassSplitDataModule):
        return len(args["train_classes"]), data_shape(args["source"])[1]  # the source's images
    shapes = {**OFFLINE_SHAPES, **KNOWN_SHAPES}
    if data["class_path"] in shapes:
        return shapes[data["class_path"]]
    return args.get("num_classes", 10), tuple(args.get("input_shape", (3, 32, 32)))


def synthetic(prefix: str, num_classes: int, shape, sizes=(16, 8, 8)) -> list[str]:
    return [f"{prefix}=lightning_kd.datamodules.SyntheticDataModule", f"{prefix}.num_classes={num_classes}",
            f"{prefix}.input_shape=[{', '.join(map(str, shape))}]", f"{prefix}.train_size={sizes[0]}",
            f"{prefix}.val_size={sizes[1]}", f"{prefix}.test_size={sizes[2]}"]


def offline_overrides(cfg: dict, tmp_path: Path) -> list[str]:
    """Command-line overrides that make a resolved config runnable offline, in a temporary folder."""
    num_classes, shape = data_shape(cfg["data"])
    args = ["--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.logger=false", f"--checkpoint.dirpath={tmp_path / 'ckpt'}"]
    if cfg["trainer"].get("strategy") == "peer_parallel":  # one process here; test_peer_parallel.py runs the placement
        args += ["--trainer.strategy=auto", "--model.init_args.placement=replicated"]
    if cfg["data"]["class_path"] in OFFLINE_SHAPES:
        args += synthetic("--data", num_classes, shape)
    source = (cfg["data"].get("init_args") or {}).get("source")
    if isinstance(source, dict) and source["class_path"] in OFFLINE_SHAPES:
        args += synthetic("--data.source", *OFFLINE_SHAPES[source["class_path"]], sizes=(32, 8, 16))
    args.append("--data.batch_size=8")
    model_args = cfg["model"]["init_args"]
    if "negatives" in model_args and cfg["data"]["class_path"] in OFFLINE_SHAPES:
        args.append("--model.init_args.negatives=4")  # CRD's bank: below the 16 synthetic training images
    if model_args.get("teacher_ckpt"):
        path = save_teacher(tmp_path / "teacher.pt", model_args["teacher"], num_classes, shape[0])
        args.append(f"--model.init_args.teacher_ckpt={path}")
    for callback in cfg["trainer"].get("callbacks") or []:
        if callback["class_path"].endswith("RouteConstrainedTeacher"):  # reads the route next to teacher_ckpt
            save_route(tmp_path / "route", model_args["teacher"], num_classes, shape[0])
    return args


def cache_published_weights(spec, folder: Path, monkeypatch) -> None:
    """A teacher with torchvision's published weights reads them offline from a hub cache in ``folder``:
    random weights of the same network stand in for the download."""
    if not is_pretrained(spec):
        return
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))
    builder = torchvision.models.get_model_builder(spec["name"].rsplit(".", 1)[-1])
    url = torchvision.models.get_model_weights(builder)[spec["weights"]].url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(builder().state_dict(), cache / Path(url).name)


def save_route(folder: Path, spec, num_classes: int, in_channels: int, anchors: int = 2) -> None:
    """A recorded teacher route (RouteRecorder's layout) of freshly built teachers."""
    states = []
    for seed in range(anchors):
        torch.manual_seed(seed)
        states.append(build_network(spec, num_classes, in_channels).state_dict())
    write_route(folder, states)


@pytest.mark.parametrize("config", FITTED, ids=[name(c) for c in FITTED])
def test_config_fits(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written under runs/ stays in the temporary folder
    cfg = resolve(config)
    cache_published_weights(cfg["model"]["init_args"].get("teacher"), tmp_path, monkeypatch)
    cli = make_cli(["fit", "-c", str(config), *offline_overrides(cfg, tmp_path)])
    assert cli.trainer.global_step >= 1, "no optimizer step was taken"
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    num_classes, shape = data_shape(cfg["data"])
    assert (cli.model.num_classes, cli.model.input_shape) == (num_classes, shape)
    assert type(cli.model).__name__ == cfg["model"]["class_path"].rsplit(".", 1)[-1]
    assert cli.model.student(torch.zeros(2, *shape)).shape == (2, num_classes)


@pytest.mark.parametrize("config", CONFIGS, ids=[name(c) for c in CONFIGS])
def test_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lightning_kd.methods." in printed and "max_epochs:" in printed


@pytest.mark.parametrize("config", sorted((CONFIG_ROOT / "cifar100").glob("*.yaml")),
                         ids=lambda c: c.name)
def test_cifar100_is_the_cifar10_recipe(config):
    """The same method, networks, weights, optimizer, schedule and callbacks as the CIFAR-10 twin;
    only the data, the checkpoint folder and the teacher's file differ."""
    mine, twin = resolve(config), resolve(CONFIG_ROOT / "cifar10" / config.name)
    assert mine["data"]["class_path"] == "lightning_kd.datamodules.CIFAR100DataModule"
    assert twin["data"]["class_path"] == "lightning_kd.datamodules.CIFAR10DataModule"
    assert mine["checkpoint"]["dirpath"] == f"runs/cifar100/{config.stem}"
    model, twin_model = mine["model"]["init_args"], twin["model"]["init_args"]
    if "teacher_ckpt" in twin_model:
        assert model.pop("teacher_ckpt") == "runs/cifar100/teacher_resnet32x4/best.ckpt"
        twin_model.pop("teacher_ckpt")
    assert (mine["model"]["class_path"], model) == (twin["model"]["class_path"], twin_model)
    assert mine["trainer"] == twin["trainer"] and mine["seed_everything"] == twin["seed_everything"]


def test_max_epochs_shortens_the_whole_recipe(tmp_path, monkeypatch):
    """``--trainer.max_epochs 24`` on the 270-epoch FSP recipe: LR drops at 16/19/21 (180/210/240 of 270
    scaled by 24/270, rounded) and 3 FSP epochs (30 of 270), computed here by hand."""
    monkeypatch.chdir(tmp_path)
    config = CONFIG_ROOT / "cifar10" / "fsp_resnet32x4_resnet8x4.yaml"
    args = [a for a in offline_overrides(resolve(config), tmp_path) if not a.startswith("--trainer.fast_dev_run")]
    cli = make_cli(["-c", str(config), *args, "--trainer.max_epochs=24"], run=False)
    cli.model.trainer = cli.trainer  # what fit does before it builds the optimizers
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sorted(scheduler.milestones) == [16, 19, 21]
    assert cli.model.stage1_epochs == 3


@pytest.mark.parametrize("given", ["configs/quickstart/baseline.yaml", "quickstart/baseline.yaml"])
def test_shipped_configs_are_found_from_any_directory(given, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the installed package's is used
    with pytest.raises(SystemExit):
        make_cli(["fit", "-c", given, "--print_config"])
    assert "class_path: lightning_kd.methods.Supervised" in capsys.readouterr().out
    (tmp_path / "configs" / "quickstart").mkdir(parents=True)  # a file of the user's own wins
    (tmp_path / "configs" / "quickstart" / "baseline.yaml").write_text(
        (CONFIG_ROOT / "quickstart" / "baseline.yaml").read_text().replace("../_base", str(CONFIG_ROOT / "_base"))
        + "model.init_args.student: {name: small_cnn, width: 7}\n")
    if given.startswith("configs/"):
        with pytest.raises(SystemExit):
            make_cli(["fit", "-c", given, "--print_config"])
        assert "width: 7" in capsys.readouterr().out
