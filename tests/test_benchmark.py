"""The CIFAR-100 benchmark grid (configs/_base/pairs x configs/_base/methods, lightning_kd.tools.grid): every
cell parses and trains one tiny batch; the methods that do not apply to a pair are refused by the method
itself; a new method block and its per-pair setting join the grid by themselves."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
import yaml

from lightning_kd.callbacks.route import write_route
from lightning_kd.cli import make_cli, with_shipped_configs
from lightning_kd.models import build_network
from lightning_kd.tools import grid

# The 13 teacher -> student pairs of the CRD paper's CIFAR-100 Tables 1 and 2 (Tian et al., ICLR 2020).
CRD_PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
             ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
             ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleNetV1"),
             ("resnet32x4", "ShuffleNetV2"), ("wrn_40_2", "ShuffleNetV1")]
# RepDistiller's train_student.py / train_teacher.py: `if opt.model_s in ['MobileNetV2', 'ShuffleV1', 'ShuffleV2']:
# opt.learning_rate = 0.01`; every other network trains at 0.05.
SMALL_LR_STUDENTS = {"MobileNetV2", "ShuffleNetV1", "ShuffleNetV2"}
# The normal suite trains every method of two pairs, one of each table, whose blocks set the most: FSP's layers;
# the small-student LR, hint layers of other indices and shifted AT layers. The other 11 pairs' cells are slow.
FAST_PAIRS = ("resnet56_resnet20", "vgg13_MobileNetV2")
CELLS = [pytest.param(p, m, id=f"{p}-{m}", marks=() if p in FAST_PAIRS else pytest.mark.slow)
         for p in grid.pair_names() for m in [grid.TEACHER, *grid.method_names()]]


def tiny_data(epochs: int = 1) -> list[str]:
    """CIFAR-100-shaped synthetic data, one batch of 4 (RKD's angles need 3) per epoch, no validation."""
    return ["--data=lightning_kd.datamodules.SyntheticDataModule", "--data.num_classes=100",
            "--data.input_shape=[3, 32, 32]", "--data.train_size=4", "--data.val_size=2", "--data.test_size=2",
            "--data.batch_size=4", f"--trainer.max_epochs={epochs}", "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=0", "--trainer.accelerator=cpu", "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--summary=false"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """One lightning-kd CLI whose parser every cell reuses (building it is most of a CLI's cost)."""
    pair = grid.load_pair(grid.pair_names()[0])
    folder = tmp_path_factory.mktemp("baseline")
    return make_cli([*grid.cell_args(pair, "baseline"), *tiny_data(), f"--checkpoint.dirpath={folder}"], run=False)


class TeacherFiles(dict):
    """teacher network -> a state_dict file (random weights, calibrated BatchNorm) with a recorded route of two
    anchors beside it, written when first asked for."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, teacher: str) -> str:
        (self.folder / teacher).mkdir()
        self[teacher] = path = str(self.folder / teacher / "teacher.pt")
        torch.save(calibrated(teacher), path)
        write_route(self.folder / teacher / "route", [calibrated(teacher, seed) for seed in (1, 2)])
        return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return TeacherFiles(tmp_path_factory.mktemp("teachers"))


def calibrated(network: str, seed: int = 0) -> dict:
    """A random network's state_dict whose BatchNorm statistics are those of random images, as a trained
    teacher's are of its data: without them a deep network's eval-mode features explode (resnet110's FSP
    matrices then diverge in one step)."""
    torch.manual_seed(seed)
    net = build_network(network, 100)
    for module in net.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.momentum = None  # a cumulative average: one batch sets the statistics
    with torch.no_grad():
        net.train()(torch.randn(8, 3, 32, 32))
    return net.state_dict()


def test_the_grid_is_the_crd_tables_pairs():
    pairs = [grid.load_pair(name) for name in grid.pair_names()]
    assert sorted((p.teacher, p.student) for p in pairs) == sorted(CRD_PAIRS)
    assert all(p.name == f"{p.teacher}_{p.student}" for p in pairs)


@pytest.mark.parametrize("pair_name,method", CELLS)
def test_every_cell_trains_one_tiny_batch(pair_name, method, teachers, cli, tmp_path):
    pair = grid.load_pair(pair_name)
    args = grid.cell_args(pair, method) if grid.applies(pair, method) else None
    if args is None:  # the pair block says why; the method itself refuses the pair (no silent n/a)
        with pytest.raises(ValueError, match=method):
            grid.cell_args(pair, method)
        del pair.not_applicable[method]
        with pytest.raises(ValueError):
            fit_one_batch(cli, pair, method, teachers, tmp_path)
        return
    model, fit = fit_one_batch(cli, pair, method, teachers, tmp_path)
    assert fit.global_step == fit.max_epochs  # one step per epoch: both stages of a two-stage method
    assert math.isfinite(float(fit.callback_metrics["train/loss"]))
    trained = pair.teacher if method == grid.TEACHER else pair.student
    assert type(model.student).__name__ == type(build_network(trained, 100)).__name__
    assert model.student(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    if method not in grid.NO_TEACHER:
        assert type(model.teacher.net).__name__ == type(build_network(pair.teacher, 100)).__name__
    lr = fit.optimizers[0].param_groups[0]["initial_lr"]
    assert lr == (0.01 if trained in SMALL_LR_STUDENTS and method != grid.TEACHER else 0.05)


def fit_one_batch(cli, pair: grid.Pair, method: str, teachers: dict, folder):
    """Parse a cell with the shared CLI's parser, build it as the CLI does and train one batch per epoch (two
    epochs for the two-stage methods: one per stage)."""
    args = [*grid.cell_args(pair, method), *tiny_data(2 if method in ("fsp", "iekd") else 1),
            f"--checkpoint.dirpath={folder}"]
    if method not in grid.NO_TEACHER:
        args.append(f"--model.init_args.teacher_ckpt={teachers[pair.teacher]}")
    cli.config = cli.parser.parse_args(with_shipped_configs(args))
    # What LightningCLI's instantiator saves as the model's hparams (RCO finds its route by teacher_ckpt there).
    cli.config_dump = yaml.safe_load(cli.parser.dump(cli.config, skip_link_targets=False, skip_none=False))
    cli.instantiate_classes()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model, cli.trainer


def copy_blocks(folder, monkeypatch):
    """configs/_base copied into ``folder`` (the blocks' relative includes keep working), the grid reading it."""
    base = shutil.copytree(grid.METHODS.parent, folder / "_base")
    for name, path in (("METHODS", "methods"), ("PAIRS", "pairs"), ("DATA", "cifar100.yaml")):
        monkeypatch.setattr(grid, name, base / path)
    return base


def test_a_new_method_block_and_its_per_pair_setting_join_the_grid(tmp_path, monkeypatch, teachers):
    """How DKD's beta (or any per-pair setting of a method landing later) is expressed: a method block in
    configs/_base/methods/ and one line under `methods:` in the pair blocks that set it."""
    base = copy_blocks(tmp_path, monkeypatch)
    (base / "methods" / "kd_t2.yaml").write_text("config: kd.yaml\nmodel.init_args.temperature: 2.0\n")
    pair_file = base / "pairs" / "resnet56_resnet20.yaml"
    pair_file.write_text(pair_file.read_text() + "  kd_t2: {temperature: 8.0, ce_weight: 0.5}\n")
    assert "kd_t2" in grid.method_names()
    temperatures = {}
    for name in ("resnet56_resnet20", "resnet110_resnet20"):
        cli = make_cli(["fit", *grid.cell_args(grid.load_pair(name), "kd_t2"), *tiny_data(),
                        f"--checkpoint.dirpath={tmp_path / name}",
                        f"--model.init_args.teacher_ckpt={teachers[grid.load_pair(name).teacher]}"])
        temperatures[name] = (cli.model.temperature, cli.model.loss_weights["ce"])
    assert temperatures == {"resnet56_resnet20": (8.0, 0.5), "resnet110_resnet20": (2.0, 0.1)}


def test_grid_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="pick one of"):
        grid.load_pair("resnet32x4_resnet9")
    with pytest.raises(ValueError, match="pick one of"):
        grid.cell_args(grid.load_pair("resnet56_resnet20"), "kdd")
    pairs = copy_blocks(tmp_path, monkeypatch) / "pairs"
    (pairs / "a_b.yaml").write_text("teacher: a\nstudent: b\nmethods: {dkd: {beta: 8.0}}\n")
    with pytest.raises(ValueError, match=r"names methods \['dkd'\] that have no block"):
        grid.load_pair("a_b")
    (pairs / "a_b.yaml").write_text("teacher: a\nstudnet: b\n")
    with pytest.raises(ValueError, match="needs teacher and student"):
        grid.load_pair("a_b")
