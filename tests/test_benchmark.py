"""The CIFAR-100 benchmark grid (configs/_base/pairs x configs/_base/methods, lightning_kd.tools.grid): every
cell parses and trains one tiny batch; the methods that do not apply to a pair are refused by the method
itself; a new method block and its per-pair setting join the grid by themselves."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers.published import save_teacher_of, split, synthetic_cifar100, their_network
from lightning_kd.callbacks.route import write_route
from lightning_kd.checkpoints import save_repdistiller
from lightning_kd.cli import make_cli, with_shipped_configs
from lightning_kd.configs import SHIPPED_CONFIGS as CONFIGS
from lightning_kd.models import build_network
from lightning_kd.stages import TwoStageDistillation
from lightning_kd.tools import grid
from lightning_kd.tools.options import student_epochs_overrides
from lightning_kd.tools.records import Run, label
from lightning_kd.tools.report import CRD_CIFAR100, DKD_CIFAR100
from lightning_kd.tools.results import main as results_main
from lightning_kd.tools.runner import resolve

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


# CRD draws `negatives` samples per sample from the training set (the block's 16,384, the authors'): the tiny
# data of these tests has 4, so CRD's cells draw 2 (what every CRD run of these tests is told, and only that).
TINY_CRD_NEGATIVES = 2
TINY_CRD = f"--model.init_args.negatives={TINY_CRD_NEGATIVES}"


# IE-KD's factor is 1/2 of the teacher layer's channels (the authors'): on ResNet50's 2048-channel layer4 a
# 132 M-parameter autoencoder. Where ResNet50 teaches, these tests give it 1/16.
SMALL_IEKD = "--model.init_args.factor_rate=0.0625"


def repdistiller_file(folder: Path, teacher: str) -> Path:
    """Where RepDistiller's scripts/fetch_pretrained_teachers.sh puts a teacher (what ``--teachers`` reads)."""
    return folder / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"


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
    if method == "crd":
        args.append(TINY_CRD)
    if method == "iekd" and pair.teacher == "ResNet50":
        args.append(SMALL_IEKD)  # the same code at 1/16 of the size: the authors' 1/2 costs 25 s a cell here
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
    (pairs / "a_b.yaml").write_text("teacher: a\nstudent: b\nmethods: {dkd_v2: {beta: 8.0}}\n")
    with pytest.raises(ValueError, match=r"names methods \[.dkd_v2.\] that have no block"):
        grid.load_pair("a_b")
    (pairs / "a_b.yaml").write_text("teacher: a\nstudnet: b\n")
    with pytest.raises(ValueError, match="needs teacher and student"):
        grid.load_pair("a_b")


def test_a_cell_fits_from_a_repdistiller_teacher_file_and_logs_its_accuracy(tmp_path, monkeypatch):
    """`lightning-kd fit` of a pair's cell (resnet32x4 -> ShuffleNetV2, AT, the student's 0.01 LR) with
    RepDistiller's teacher file (its layout, names and wrapper; the fixture's deterministic weights, the head
    favouring one label) as teacher_ckpt: the teacher is theirs and teacher/acc is its accuracy."""
    monkeypatch.chdir(tmp_path)
    data_args, data = synthetic_cifar100()
    x, y = split(data, "val")
    teacher = repdistiller_file(tmp_path, "resnet32x4")
    save_teacher_of("resnet32x4", teacher, label=int(y[0]))
    reference = their_network("resnet32x4", teacher)
    assert reference(x).argmax(1).tolist() == [int(y[0])] * len(y)
    cli = make_cli(["fit", *grid.cell_args(grid.load_pair("resnet32x4_ShuffleNetV2"), "at"), *data_args,
                    f"--model.init_args.teacher_ckpt={teacher}", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.logger=false",
                    "--trainer.accelerator=cpu", "--summary=false", f"--checkpoint.dirpath={tmp_path / 'at'}"])
    assert cli.trainer.global_step == 2
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in cli.model.teacher.net.state_dict().items())
    assert float(cli.trainer.callback_metrics["teacher/acc"]) == pytest.approx(float((y == y[0]).float().mean()))


@pytest.mark.parametrize("config,epochs,expected", [
    ("cifar100/fsp_resnet32x4_resnet8x4.yaml", 240, (270, 30)),  # the recipe: 30 FSP epochs, then 240
    ("cifar100/iekd_resnet32x4_resnet8x4.yaml", 240, (270, 30)),
    ("cifar100/fsp_resnet32x4_resnet8x4.yaml", 16, (18, 2)),  # 30 / 240 of 16 = 2
    ("quickstart/fsp.yaml", 30, (35, 5)),  # 5 stage-1 epochs, then 30
    ("quickstart/iekd.yaml", 12, (14, 2)),  # 5 / 30 of 12 = 2
    ("cifar100/fitnet_resnet32x4_resnet8x4.yaml --model.init_args.stages=hints_first", 12, (16, 4)),  # 60 of 240
    ("cifar100/fitnet_resnet32x4_resnet8x4.yaml", 12, (12, 0)),  # joint: no stage 1
    ("cifar100/kd_resnet32x4_resnet8x4.yaml", 12, (12, 0)),
])
def test_epochs_n_trains_every_student_n_epochs_and_a_first_stage_on_top(config, epochs, expected):
    """The results tool's --epochs N: N student epochs for every method, a stage that does not train the whole
    student added on top; the method's own count of its stage-1 epochs (TwoStageDistillation) is the judge."""
    config, *options = config.split()
    cfg = resolve(CONFIGS / config, *options)
    overrides = dict(o.lstrip("-").split("=") for o in student_epochs_overrides(cfg, epochs))
    total = int(overrides.get("trainer.max_epochs", epochs))
    fraction = float(overrides.get("model.init_args.stage1_fraction", 0))
    method = SimpleNamespace(stage1_fraction=fraction, trainer=SimpleNamespace(max_epochs=total))
    stage1 = TwoStageDistillation.stage1_epochs.fget(method)
    assert (total, stage1) == expected and total - stage1 == epochs


def grid_command(tmp_path, *extra: str) -> tuple[list, str]:
    """The results command over the grid at tiny settings: one seed, one epoch of one batch of 4 synthetic
    CIFAR-100-shaped images, validation (no sanity check before it) and test on 4."""
    data = ["--data=lightning_kd.datamodules.SyntheticDataModule", "--data.num_classes=100",
            "--data.input_shape=[3, 32, 32]", "--data.train_size=4", "--data.val_size=4", "--data.test_size=4",
            "--data.batch_size=4", "--trainer.accelerator=cpu", "--trainer.num_sanity_val_steps=0"]
    out = tmp_path / "BENCHMARK.md"
    runs = results_main(["--seeds", "0", "--epochs", "1", "--limit-train-batches", "1", "--out", str(out),
                         "--run-dir", str(tmp_path / "runs"), *[f"--override={o}" for o in data], *extra])
    return runs, out.read_text()


def grid_rows(text: str) -> dict[str, list[str]]:
    """The benchmark table's rows by their first cell (the header's under "method")."""
    lines = [line for line in text.split("## Runs")[0].splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def test_the_grid_command_trains_teachers_shares_runs_and_resumes(tmp_path, capsys):
    """Two pairs sharing a student: the teachers are trained (RCO walks their routes), resnet20's baseline once
    for both; the same command again reuses every run and writes the same table."""
    runs, text = grid_command(tmp_path, "--pairs", "resnet56_resnet20", "resnet110_resnet20", "--methods", "kd", "rco")
    printed = capsys.readouterr().out
    assert printed.count("[results] baseline resnet20 seed 0: running") == 1
    assert sorted(r.key for r in runs) == sorted(["teacher resnet56", "teacher resnet110", "baseline resnet20",
                                                  "resnet56_resnet20 kd", "resnet56_resnet20 rco",
                                                  "resnet110_resnet20 kd", "resnet110_resnet20 rco"])
    rows = grid_rows(text)
    assert rows["method"] == ["resnet56 → resnet20", "resnet110 → resnet20"]
    by_key = {r.key: f"{100 * r.test_acc:.2f} ± 0.00" for r in runs}
    assert rows["student baseline"] == [f"{by_key['baseline resnet20']} (CRD 69.06)"] * 2
    assert rows["KD"] == [f"{by_key['resnet56_resnet20 kd']} (CRD 70.66)", f"{by_key['resnet110_resnet20 kd']} (CRD 70.67)"]
    assert rows["RCO"] == [by_key["resnet56_resnet20 rco"], by_key["resnet110_resnet20 rco"]]  # no published figure
    assert rows["teacher"] == [f"{by_key['teacher resnet56']} (CRD 72.34)", f"{by_key['teacher resnet110']} (CRD 74.31)"]
    rco = next(r for r in runs if r.key == "resnet56_resnet20 rco")
    teacher = next(r for r in runs if r.key == "teacher resnet56")
    assert f"--model.init_args.teacher_ckpt={teacher.best_ckpt}" in rco.overrides
    assert (Path(teacher.best_ckpt).parent / "route" / "route.json").is_file()

    again, text_again = grid_command(tmp_path, "--pairs", "resnet56_resnet20", "resnet110_resnet20", "--methods",
                                     "kd", "rco")
    assert "running" not in capsys.readouterr().out and text_again == text


def check_grid_table(text: str, pairs: list[grid.Pair], methods: list[str], runs: list) -> dict[str, list[str]]:
    """The table of a grid command over ``pairs`` x ``methods`` with published teachers: a column per pair, a row
    per method; a cell per (pair, method) that applies, each with its paper's figure where it has one, n/a exactly
    where the pair block says; one run per cell, one baseline per student network. Returns the rows."""
    rows = grid_rows(text)
    assert rows["method"] == [f"{p.teacher} → {p.student}" for p in pairs]
    assert "teacher" not in rows  # published: not trained here
    assert len(rows) == 1 + len(methods)
    for key, cells in rows.items():
        if key == "method":
            continue
        method = next(m for m in methods if key == label(m) or key.startswith(label(m) + " (epochs"))
        for pair, cell in zip(pairs, cells):
            if not grid.applies(pair, method):
                assert cell == "n/a"
                continue
            assert re.fullmatch(r"\d+\.\d\d ± 0\.00( \((CRD|DKD) \d+\.\d\d\))?", cell), cell
            paper = CRD_CIFAR100[pair.name].get(method)
            assert (paper is None) == ("(CRD" not in cell) and (paper is None or f"(CRD {paper:.2f})" in cell)
            dkd = DKD_CIFAR100.get(pair.name) if method == "dkd" else None
            assert (dkd is None) == ("(DKD" not in cell) and (dkd is None or cell.endswith(f"(DKD {dkd:.2f})"))
    assert len(runs) == len({p.student for p in pairs}) + sum(
        grid.applies(p, m) for p in pairs for m in methods if m != "baseline")
    return rows


def published_teachers(folder: Path, pairs: list[grid.Pair]) -> Path:
    """Teacher files of ``pairs`` in RepDistiller's layout and format (random weights, calibrated BatchNorm)."""
    for teacher in {p.teacher for p in pairs}:
        net = build_network(teacher, 100)
        net.load_state_dict(calibrated(teacher))
        repdistiller_file(folder, teacher).parent.mkdir(parents=True)
        save_repdistiller(net, repdistiller_file(folder, teacher))
    return folder


@pytest.mark.slow
def test_the_grid_with_published_teachers_trains_every_cell_of_its_pairs(tmp_path, capsys, monkeypatch):
    """Two pairs, one of each CRD table (FSP applies to the first, not to the second), x every method that applies
    (RCO needs a recorded route: not with --teachers), from teachers in RepDistiller's layout and format, trained
    and tested through the grid command. The other pairs' cells train in test_every_cell_trains_one_tiny_batch and
    fill the whole table in test_the_whole_grid_table_has_every_cell_and_its_published_figures.
    The blocks are the shipped ones but for CRD's, which draws 2 negatives of the 4 training images (TINY_CRD)."""
    crd = copy_blocks(tmp_path, monkeypatch) / "methods" / "crd.yaml"
    block = yaml.safe_load(crd.read_text())
    block["model"]["init_args"]["negatives"] = TINY_CRD_NEGATIVES
    crd.write_text(yaml.safe_dump(block))
    pairs = [grid.load_pair(p) for p in FAST_PAIRS]
    methods = [m for m in grid.method_names() if m != "rco"]
    runs, text = grid_command(tmp_path, "--pairs", *FAST_PAIRS, "--methods", *methods, "--teachers",
                              str(published_teachers(tmp_path / "teachers", pairs)))
    rows = check_grid_table(text, pairs, methods, runs)
    assert [grid.applies(p, "fsp") for p in pairs] == [True, False]
    assert rows[label("fsp") + " (epochs: 1 + 1)"][0] != "n/a"  # its stage on top of the student's epoch


def test_the_whole_grid_table_has_every_cell_and_its_published_figures(tmp_path, capsys, monkeypatch):
    """The grid command over all 13 pairs x every method with published teachers, each run replaced by a record
    of a made-up accuracy, distinct per run (training every cell is test_every_cell_trains_one_tiny_batch's work,
    loading the published teachers test_published.py's): every run gets its pair's teacher file and the student's
    epochs, one cell per pair resolves to the pair's networks, and every cell of the table shows its own run's
    accuracy, its paper's figure, or n/a exactly where the pair says."""
    import lightning_kd.tools.results as results

    teachers, accuracy, calls = tmp_path / "teachers", {}, []

    def recorded_without_training(key, config, seed, overrides, run_dir, teacher_finished="", rerun=False):
        calls.append((key, config, overrides, teacher_finished))
        accuracy[key] = len(accuracy) / 1000
        return Run(key, config, seed, overrides, test_acc=accuracy[key], best_ckpt=str(run_dir / "best.ckpt"),
                   finished="2026-12-07T00:00:00+00:00", device="none")

    monkeypatch.setattr(results, "run_one", recorded_without_training)
    pairs = [grid.load_pair(p) for p in grid.pair_names()]
    pair_of = {p.name: p for p in pairs}
    methods = [m for m in grid.method_names() if m != "rco"]
    for teacher in {p.teacher for p in pairs}:  # the files the command checks for; no run reads them here
        repdistiller_file(teachers, teacher).parent.mkdir(parents=True)
        repdistiller_file(teachers, teacher).touch()
    runs, text = grid_command(tmp_path, "--pairs", *grid.pair_names(), "--methods", *methods, "--teachers",
                              str(teachers))
    rows = check_grid_table(text, pairs, methods, runs)
    for method in methods:
        for pair, cell in zip(pairs, rows[label(method)]):
            key = f"baseline {pair.student}" if method == "baseline" else f"{pair.name} {method}"
            assert cell == "n/a" or cell.startswith(f"{100 * accuracy[key]:.2f} ± 0.00"), (key, cell)
    for key, config, overrides, teacher_finished in calls:
        name, method = key.split()  # "<pair> <method>", or "baseline <student network>"
        method = "baseline" if name == "baseline" else method
        epochs = [o for o in overrides if o.startswith("--trainer.max_epochs=")][-1]  # the last one given wins
        assert epochs == f"--trainer.max_epochs={2 if method in ('fsp', 'iekd') else 1}"  # their stage on top
        if method == "baseline":
            assert teacher_finished == "" and not any("teacher_ckpt" in o for o in overrides)
            continue
        file = repdistiller_file(teachers, pair_of[name].teacher)  # its pair's teacher
        assert f"--model.init_args.teacher_ckpt={file}" in overrides and teacher_finished == f"published {file}"
        if method == "kd":  # the whole command line of one cell per pair parses to the pair's networks
            model = resolve(config, *overrides)["model"]["init_args"]
            assert (model["teacher"], model["student"]) == (pair_of[name].teacher, pair_of[name].student)


def test_a_baseline_identical_to_the_teacher_run_is_the_teacher_run(tmp_path, capsys):
    """FSP's student is the quickstart teacher's network: its baseline's seed 0 trains exactly as the teacher
    run (same resolved config but the folders and RouteRecorder), so it is that run; seed 1 is trained."""
    runs = results_main(["--configs", str(CONFIGS / "quickstart"), "--seeds", "0", "1", "--epochs", "1",
                         "--limit-train-batches", "1", "--only", "fsp", "--out", str(tmp_path / "R.md"),
                         "--run-dir", str(tmp_path / "runs")])
    printed = capsys.readouterr().out
    wide = [r for r in runs if r.key == "baseline@small_cnn(width=64)"]
    assert [r.seed for r in wide] == [0, 1]
    assert wide[0].best_ckpt == runs[0].best_ckpt and wide[0].test_acc == runs[0].test_acc
    assert wide[1].best_ckpt != runs[0].best_ckpt
    assert "baseline (small_cnn(width=64)) seed 0: running" not in printed
    assert "baseline (small_cnn(width=64)) seed 1: running" in printed
