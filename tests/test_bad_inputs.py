"""A catalogue of bad inputs and faults: configs, checkpoints, resumes, data and methods.

Each case must raise an error of the expected type whose message names the problem (a regex), before
the first optimizer step (the few that need training to show are listed in ``AFTER_STEPS``), must
leave the checkpoint folder of an earlier run byte for byte as it was, and must write no checkpoint
into its own, fresh folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from helpers import (DIGITS_SHAPE, ROOT, TINY_CNN, SaveAfterBatches, build_method, png_bytes, save_teacher,
                     trainer as quick_trainer, write_shards)
from lightning_kd.datamodules import DigitsDataModule, ImageFolderDataModule, StreamingImageDataModule
from lightning_kd.checkpoints import UnsafeCheckpointError
from lightning_kd.cli import main, make_cli
from lightning_kd.callbacks import RouteConstrainedTeacher, RouteRecorder
from lightning_kd.callbacks.route import write_route
from lightning_kd.callbacks.run_folder import lock_folder
from lightning_kd.trust import UntrustedNameError
from lightning_kd.methods import DML, KD, Supervised
from lightning_kd.models import build_network
from lightning_kd.schedules import RelativeCosineAnnealingLR
from lightning_kd.tools.shards import convert_tree

WIDE = {"name": "small_cnn", "width": 8}


class StepCounter(Callback):
    def __init__(self, steps: list):
        self.steps = steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(trainer.global_step)


@dataclass
class Env:
    """What a case may use: a temporary folder, a digits teacher file, the checkpoint folder of an earlier
    run (``ckpt_dir``) and a fresh folder for the failing run's own checkpoints (``new_dir``)."""

    tmp: Path
    teacher: str
    ckpt_dir: Path
    steps: list = field(default_factory=list)

    @property
    def new_dir(self) -> Path:
        return self.tmp / "new_run"

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.ckpt"

    def fit(self, model, data=None, ckpt_path=None, folder=None, callbacks=(), **trainer_kwargs):
        """A fit into ``folder``: by default the earlier run's when resuming from it, else a fresh one."""
        resumes_earlier = ckpt_path is not None and Path(ckpt_path).parent == self.ckpt_dir
        folder = folder or (self.ckpt_dir if resumes_earlier else self.new_dir)
        callbacks = [ModelCheckpoint(folder, save_last=True), StepCounter(self.steps), *callbacks]
        trainer = quick_trainer(self.tmp, enable_checkpointing=True, callbacks=callbacks, **trainer_kwargs)
        trainer.fit(model, datamodule=data or DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)

    def kd(self, teacher_ckpt: str | None = None, **kwargs):
        return build_method("KD", teacher_ckpt or self.teacher, **kwargs)

    def cli(self, *args, config="kd.yaml", folder=None):
        make_cli(["fit", "-c", str(ROOT / "configs/quickstart" / config), "--trainer.logger=false",
                  f"--model.init_args.teacher_ckpt={self.teacher}", f"--model.init_args.teacher={json.dumps(TINY_CNN)}",
                  f"--checkpoint.dirpath={folder or self.new_dir}", "--trainer.max_epochs=1", *args])

    def main(self, subcommand: str, *args, config="kd.yaml"):
        """``lightning-kd SUBCOMMAND`` as the shell runs it (library errors: one line, exit 1)."""
        main([subcommand, "-c", str(ROOT / "configs/quickstart" / config), "--trainer.logger=false",
              f"--model.init_args.teacher_ckpt={self.teacher}", f"--model.init_args.teacher={json.dumps(TINY_CNN)}",
              f"--checkpoint.dirpath={self.new_dir}", "--trainer.max_epochs=1", *args])

    def file(self, name: str, data: bytes) -> str:
        path = self.tmp / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A teacher file and the checkpoint folder of an earlier, successful KD run."""
    root = tmp_path_factory.mktemp("earlier")
    teacher = save_teacher(root / "teacher.pt", TINY_CNN, 10, 1, seed=1)
    env = Env(root, teacher, root / "ckpt")
    model = env.kd(lr_scheduler=RelativeCosineAnnealingLR)
    env.fit(model, folder=env.ckpt_dir, limit_train_batches=1)
    assert env.steps == [0] and env.last.is_file()
    return root


@pytest.fixture
def env(earlier_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a CLI run writes (runs/...) stays here
    shutil.copytree(earlier_run / "ckpt", tmp_path / "ckpt")
    return Env(tmp_path, str(earlier_run / "teacher.pt"), tmp_path / "ckpt")


# ----------------------------------------------------------------------------- data on disk
def png(path: Path, color=(200, 10, 10)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)


def image_folder(root: Path, extra: dict[str, bytes] = {}) -> str:
    """``root/{train,test}/{cat,dog}/0.png`` plus ``extra`` files (relative path -> bytes)."""
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            png(root / split / cls / "0.png")
    for rel, data in extra.items():
        (root / rel).write_bytes(data)
    return str(root)


def empty_folder(root: Path) -> str:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    return str(root)


def truncated(env: Env, source: str | Path, name: str) -> str:
    data = Path(source).read_bytes()
    return env.file(name, data[: len(data) // 2])


def teacher_of(env: Env, spec, num_classes: int = 10, in_channels: int = 1) -> str:
    return save_teacher(env.tmp / "other_teacher.pt", spec, num_classes, in_channels)


def other_teacher_file(env: Env, name: str = "teacher_copy.pt") -> str:
    """The earlier run's teacher, moved: same weights, another file."""
    return env.file(name, Path(env.teacher).read_bytes())


def image_file(path: Path) -> str:
    png(path)
    return str(path)


def tree(root: Path, splits: dict[str, list[str]], empty: tuple[str, ...] = ()) -> str:
    """An image tree: ``{split: [class folders]}``, one image per folder except the ``empty`` ones."""
    for split, classes in splits.items():
        for cls in classes:
            if f"{split}/{cls}" in empty:
                (root / split / cls).mkdir(parents=True)
            else:
                png(root / split / cls / "0.png")
    return str(root)


def convert_into(env: Env, out: Path, extra: dict[str, bytes] = {}) -> None:
    """The shard converter from a two-class tree (plus ``extra`` files) into ``out``; the tree must stay as it was."""
    root = Path(image_folder(env.tmp / "tree", extra))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    try:
        convert_tree(str(root), str(out if out.is_absolute() else root / out), splits=["train"], num_workers=1)
    finally:
        assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before, "the tree changed"


def not_the_converters(env: Env) -> Path:
    (env.tmp / "out" / "train").mkdir(parents=True)
    (env.tmp / "out" / "train" / "notes.txt").write_text("mine")
    return env.tmp / "out"


def duplicated_route(env: Env) -> str:
    files = write_route(env.tmp / "route", [build_network(TINY_CNN, 10, 1).state_dict()] * 2)
    manifest = env.tmp / "route" / "route.json"
    manifest.write_text(manifest.read_text().replace('"epoch": 1', '"epoch": 0'))
    return str(files[0].parent)


def used_route_folder(env: Env) -> Path:
    write_route(env.tmp / "used_route", [build_network(TINY_CNN, 10, 1).state_dict()])
    return env.tmp / "used_route"


def diverging_kd(env: Env):
    """KD whose learning rate is so high that the weights (BatchNorm statistics) overflow while every
    loss term stays finite: one batch per epoch, the whole training split."""
    pl.seed_everything(0)
    return env.kd(student=TINY_CNN, optimizer=partial(torch.optim.SGD, lr=1e6))


def unsafe_teacher(env: Env) -> str:
    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(env.tmp / 'payload_ran')!r}, 'w').write('ran')",)

    path = env.tmp / "evil.pt"
    torch.save({"fc.weight": Payload()}, path)
    return str(path)


PAYLOAD_NETWORK = {"name": "helpers.payload.marker_network"}  # a callable no file may name (lightning_kd.trust)
KD_PATH = "lightning_kd.methods.KD"  # what a checkpoint written by lightning-kd records as its class


def crafted(env: Env, checkpoint_keys: dict = {}, **hparams) -> str:
    """The earlier run's last.ckpt with ``hparams`` in its hyper-parameters (what an attacker would edit)."""
    checkpoint = torch.load(env.last, weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    checkpoint.update(checkpoint_keys)
    path = env.tmp / "crafted.ckpt"
    torch.save(checkpoint, path)
    return str(path)


def nan_weights(env: Env, name: str) -> str:
    """The earlier run's teacher with one NaN BatchNorm statistic."""
    state = torch.load(env.teacher, weights_only=True)
    state["stem.1.running_var"][0] = float("nan")
    path = env.tmp / name
    torch.save(state, path)
    return str(path)


def resume_with_a_replaced_member(env: Env) -> None:
    """A KD run from an ensemble of two copies of the teacher, stopped after a step; one member then saved over
    with other weights, and the run resumed."""
    members = [other_teacher_file(env, "member0.pt"), other_teacher_file(env, "member1.pt")]
    folder = env.tmp / "ensemble_run"

    def fit(ckpt_path, steps: list):
        model = build_method("KD", None, teacher={**ensemble_of(members[0]), "checkpoints": members,
                                                  "network": TINY_CNN})
        trainer = quick_trainer(env.tmp, enable_checkpointing=True, max_steps=1 if ckpt_path is None else 2,
                                callbacks=[ModelCheckpoint(folder, save_last=True), StepCounter(steps)])
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)

    fit(None, [])
    save_teacher(Path(members[1]), TINY_CNN, 10, 1, seed=9)
    fit(folder / "last.ckpt", env.steps)


def accumulating_checkpoint(env: Env) -> str:
    """A checkpoint written after batch 2 of a run accumulating gradients over 2 batches (batch 2's waits)."""
    trainer = quick_trainer(env.tmp, accumulate_grad_batches=2, limit_train_batches=4,
                            callbacks=[SaveAfterBatches(env.tmp, (2,))])
    trainer.fit(env.kd(), datamodule=DigitsDataModule(batch_size=16))
    return str(env.tmp / "batch2.ckpt")


def resume_with_a_replaced_anchor(env: Env) -> None:
    """An RCO run along a 2-anchor route, stopped after a step; its first anchor then rewritten with other weights
    (a teacher's run recorded again into the same route), and the run resumed."""
    def anchors(seed: int) -> list:
        torch.manual_seed(seed)
        return [build_network(TINY_CNN, 10, 1).state_dict() for _ in range(2)]

    route, folder = env.tmp / "route", env.tmp / "rco_run"
    write_route(route, anchors(0))

    def fit(ckpt_path, steps: list):
        trainer = quick_trainer(env.tmp, enable_checkpointing=True, max_steps=1 if ckpt_path is None else 2,
                                callbacks=[ModelCheckpoint(folder, save_last=True), StepCounter(steps),
                                           RouteConstrainedTeacher(route)])
        trainer.fit(env.kd(), datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)

    fit(None, [])
    write_route(route, anchors(1))
    fit(folder / "last.ckpt", env.steps)


def ensemble_of(path: str) -> dict:
    return {"name": "lightning_kd.models.CheckpointEnsemble", "checkpoints": [path]}


def pickled_shards(env: Env) -> str:
    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(env.tmp / 'payload_ran')!r}, 'w').write('ran')",)

    return write_shards(env.tmp / "shards", [Payload()] * 4)


def streamed_kd(env: Env):
    """KD on streamed 3-channel 8-pixel crops, caching the teacher's outputs."""
    data = StreamingImageDataModule(write_shards(env.tmp / "shards", [png_bytes()] * 4), image_size=8, resize=8,
                                    batch_size=2, num_workers=0, return_index=True)
    model = env.kd(num_classes=2, input_shape=(3, 8, 8), teacher_ckpt=teacher_of(env, TINY_CNN, 2, in_channels=3),
                   cache_teacher_outputs=True)
    env.fit(model, data)


def float_tiffs(root: Path, brightest: float) -> str:
    """A greyscale tree of 32-bit float TIFFs (values in [0, 1]), one of them reaching ``brightest``."""
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(root / split / cls / "0.tif")
    ramp = np.linspace(0, brightest, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp).save(root / "train" / "dog" / "1.tif")
    return str(root)


class Poison(Callback):
    """At the end of epoch ``epoch``'s training (before its checkpoint and anchor are written), ``poison`` hits
    the module and its optimizer: finite loss terms, but what would be written has diverged."""

    def __init__(self, poison, epoch: int = 1):
        self.poison, self.epoch = poison, epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            self.poison(pl_module, trainer.optimizers[0])


def inf_second_moment(module, optimizer):
    optimizer.state[next(iter(optimizer.state))]["exp_avg_sq"].fill_(float("inf"))


def huge_weight(module, optimizer):
    module.student.stem[0].weight.data.mul_(1e30)  # finite, and far beyond any trained network's


def inf_batchnorm(module, optimizer):
    next(m for m in module.student.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("inf"))


def poisoned_fit(env: Env, poison, model=None, callbacks=()):
    """Two epochs without validation (a checkpoint at each epoch end), ``poison`` at the end of the second."""
    model = model or env.kd(optimizer=partial(torch.optim.Adam, lr=1e-3))
    env.fit(model, callbacks=[Poison(poison), *callbacks], max_epochs=2, limit_val_batches=0)


def fit_while_another_run_writes(env: Env):
    """A fit into a folder whose lock another writer holds (as a run started at the same moment would)."""
    held = lock_folder(env.new_dir)
    try:
        env.fit(env.kd())
    finally:
        os.close(held)  # the only descriptor of that lock: closing it unlocks


# ----------------------------------------------------------------------------- the catalogue
# (id, exception type, message regex, the failing call)
CASES = [
    # configs and the command line (the parser exits with the message on stderr)
    ("cli-unknown-class-path", SystemExit, r"class_path 'lightning_kd.methods.Nope'.*no attribute 'Nope'",
     lambda e: e.cli("--model=lightning_kd.methods.Nope")),
    ("cli-misspelt-argument", SystemExit, r"Option 'temprature' is not accepted",
     lambda e: e.cli("--model.init_args.temprature=2")),
    ("cli-unknown-optimizer-argument", SystemExit, r"Option 'lrr' is not accepted",
     lambda e: e.cli("--model.init_args.optimizer.init_args.lrr=0.1")),
    ("unknown-network", ValueError, r"Unknown network 'resnet9'.*Did you mean",
     lambda e: e.kd(student="resnet9")),
    ("network-spec-conflicts-with-data", ValueError, r"sets num_classes, which conflicts with num_classes=10",
     lambda e: e.kd(student={"name": "small_cnn", "width": 4, "num_classes": 100})),
    ("wrong-input-shape", ValueError, r"built for input_shape=\(3, 32, 32\).*DigitsDataModule has input_shape",
     lambda e: e.fit(e.kd(input_shape=(3, 32, 32), teacher_ckpt=teacher_of(e, TINY_CNN, in_channels=3)))),
    ("model-classes-differ-from-data", ValueError, r"built for num_classes=100.*has num_classes=10",
     lambda e: e.fit(e.kd(num_classes=100, teacher_ckpt=teacher_of(e, TINY_CNN, num_classes=100)))),
    ("bad-optimizer-args", ValueError, r"Invalid learning rate: -0.1",
     lambda e: e.fit(e.kd(optimizer=partial(torch.optim.SGD, lr=-0.1)))),
    ("max-epochs-before-stage-2", ValueError, r"max_epochs=2 leaves no epoch for stage 2: stage 1 takes",
     lambda e: e.fit(build_method("IEKD", e.teacher, stage1_fraction=0.9), max_epochs=2)),
    ("zero-batch-size", ValueError, r"batch_size must be >= 1, got 0",
     lambda e: e.fit(e.kd(), DigitsDataModule(batch_size=0))),
    # checkpoints
    ("missing-teacher-ckpt", FileNotFoundError, r"teacher_ckpt '.*nope.ckpt' does not exist",
     lambda e: e.kd(teacher_ckpt=str(e.tmp / "nope.ckpt"))),
    ("empty-teacher-ckpt", ValueError, r"teacher_ckpt '.*empty.pt' is empty \(0 bytes\)",
     lambda e: e.kd(teacher_ckpt=e.file("empty.pt", b""))),
    ("truncated-teacher-ckpt", ValueError, r"teacher_ckpt '.*half.pt' is corrupt or truncated",
     lambda e: e.kd(teacher_ckpt=truncated(e, e.teacher, "half.pt"))),
    ("teacher-ckpt-of-another-architecture", ValueError, r"does not fit SmallCNN.*another architecture",
     lambda e: e.kd(teacher_ckpt=teacher_of(e, "resnet8x4"))),
    ("teacher-ckpt-of-another-width", ValueError, r"shape mismatch in \d+ tensors.*another architecture or width",
     lambda e: e.kd(teacher_ckpt=teacher_of(e, WIDE))),
    ("teacher-trained-on-100-classes", ValueError, r"classifier with 100 outputs, but the data has num_classes=10",
     lambda e: e.kd(teacher_ckpt=teacher_of(e, TINY_CNN, num_classes=100))),
    ("teacher-ckpt-runs-code", UnsafeCheckpointError, r"refused to load teacher_ckpt .*arbitrary code",
     lambda e: e.kd(teacher_ckpt=unsafe_teacher(e))),
    ("missing-resume-ckpt", FileNotFoundError, r"ckpt_path '.*gone.ckpt' does not exist",
     lambda e: e.fit(e.kd(), ckpt_path=e.tmp / "gone.ckpt")),
    ("truncated-resume-ckpt", ValueError, r"ckpt_path '.*half.ckpt' is corrupt or truncated",
     lambda e: e.fit(e.kd(), ckpt_path=truncated(e, e.ckpt_dir / "last.ckpt", "half.ckpt"))),
    ("cli-truncated-resume-ckpt", ValueError, r"ckpt_path '.*half.ckpt' is corrupt or truncated",
     lambda e: e.cli(f"--ckpt_path={truncated(e, e.ckpt_dir / 'last.ckpt', 'half.ckpt')}")),
    ("resume-into-another-width", ValueError, r"other settings than this one \(student.width: 4 in the checkpoint, 8 now\)",
     lambda e: e.fit(e.kd(student=WIDE), ckpt_path=e.ckpt_dir / "last.ckpt")),
    # data
    ("missing-data-folder", FileNotFoundError, r"train folder '.*nowhere/train' does not exist",
     lambda e: ImageFolderDataModule(str(e.tmp / "nowhere"))),
    ("empty-data-folder", ValueError, r"has 0 class folder\(s\)",
     lambda e: ImageFolderDataModule(empty_folder(e.tmp / "data"))),
    ("non-image-file-in-image-folder", ValueError, r"1 non-image file\(s\) in .*notes.txt",
     lambda e: e.fit(e.kd(), ImageFolderDataModule(image_folder(e.tmp / "data", {"train/cat/notes.txt": b"hi"}),
                                                   image_size=8, batch_size=2))),
    ("undecodable-image", ValueError, r"cannot decode image '.*broken.png'",
     lambda e: e.fit(e.kd(), ImageFolderDataModule(image_folder(e.tmp / "data", {"test/dog/broken.png": b"\x89PNG"}),
                                                   image_size=8, batch_size=2))),
    # methods
    ("teacher-method-without-teacher", ValueError, r"KD distills from a teacher: set `teacher`",
     lambda e: KD(student=TINY_CNN, input_shape=DIGITS_SHAPE)),
    ("teacher-without-weights", ValueError, r"the teacher needs trained weights: set `teacher_ckpt`",
     lambda e: KD(student=TINY_CNN, teacher=TINY_CNN, input_shape=DIGITS_SHAPE)),
    ("teacherless-method-given-a-teacher", SystemExit, r"lightning_kd.methods.Supervised.*Option 'teacher_ckpt' is not accepted",
     lambda e: make_cli(["fit", "-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--trainer.logger=false",
                         f"--checkpoint.dirpath={e.ckpt_dir}", f"--model.init_args.teacher_ckpt={e.teacher}"])),
    ("zero-temperature", ValueError, r"temperature must be > 0, got 0",
     lambda e: e.kd(temperature=0)),
    ("warmup-of-the-whole-run", ValueError, r"DKD warmup is the fraction of the run .* in \[0, 1\)",
     lambda e: build_method("DKD", e.teacher, warmup=1.0)),
    ("warmup-without-a-run-length", ValueError, r"DKD's weight warm-up .* is a fraction of the run: set trainer.max_epochs",
     lambda e: e.fit(build_method("DKD", e.teacher), max_epochs=-1, max_steps=2)),
    ("negative-dkd-beta", ValueError, r"DKD's alpha and beta must be >= 0 and not all 0, got alpha=1.0, beta=-1",
     lambda e: build_method("DKD", e.teacher, beta=-1.0)),
    ("zero-dist-relations", ValueError, r"DIST's beta and gamma must be >= 0 and not all 0",
     lambda e: build_method("DIST", e.teacher, beta=0.0, gamma=0.0)),
    ("batch-of-one-for-dist", ValueError, r"DIST correlates .* at least 2 samples, but the batch size is 1",
     lambda e: e.fit(build_method("DIST", e.teacher), DigitsDataModule(batch_size=1))),
    ("negative-temperature", ValueError, r"temperature must be > 0, got -4",
     lambda e: e.kd(temperature=-4)),
    ("unknown-layer-name", ValueError, r"unknown .*name 'layer9' in SmallCNN; closest valid names",
     lambda e: build_method("FitNet", e.teacher, student_layer="layer9")),
    ("non-convolutional-feature-layer", ValueError, r"student layer 'pool' outputs shape \(2, 16\)",
     lambda e: build_method("FitNet", e.teacher, student_layer="pool")),
    ("unpaired-layer-lists", ValueError, r"AT pairs student and teacher layers one to one",
     lambda e: build_method("AT", e.teacher, student_layers=["layer1", "layer2"])),
    ("feature-shape-mismatch", ValueError, r"FSP matrix 0: .*the matrices must have the same shape",
     lambda e: build_method("FSP", teacher_of(e, WIDE), teacher=WIDE)),
    ("attention-exponent-zero", ValueError, r"p must be > 0, got 0",
     lambda e: build_method("AT", e.teacher, p=0)),
    ("odd-channels-to-split", ValueError, r"IE-KD splits the student layer 'layer1'.* 3 channels",
     lambda e: build_method("IEKD", e.teacher, student={"name": "small_cnn", "width": 3}, student_layer="layer1")),
    ("one-peer", ValueError, r"DML trains two or more peers",
     lambda e: DML(peers=[TINY_CNN], input_shape=DIGITS_SHAPE)),
    ("cache-with-augmentation", ValueError, r"cache_teacher_outputs is valid only without random augmentation",
     lambda e: e.fit(e.kd(cache_teacher_outputs=True), DigitsDataModule(batch_size=16, return_index=True))),
    ("non-finite-check-interval", ValueError, r"check_finite_every_n_steps must be an integer >= 1",
     lambda e: e.kd(check_finite_every_n_steps=0)),
    ("batch-too-small-for-rkd-angle", ValueError, r"RKD angle loss needs at least 3 samples",
     lambda e: e.fit(build_method("RKD", e.teacher), DigitsDataModule(batch_size=2))),
    ("crd-bank-larger-than-the-data", ValueError, r"CRD draws 16384 negatives per sample, and the training set has "
     r"1257 samples: set model.init_args.negatives below 1257",
     lambda e: e.fit(build_method("CRD", e.teacher, negatives=16384), DigitsDataModule(batch_size=16))),
    ("crd-on-dataloaders-without-indices", ValueError, r"CRD needs the training data's \['index', 'train_size', "
     r"'train_labels'\]: pass a lightning_kd datamodule",
     lambda e: quick_trainer(e.tmp).fit(build_method("CRD", e.teacher), train_dataloaders=[(torch.zeros(2, 1, 8, 8),
                                                                                          torch.zeros(2).long())])),
    # non-finite weights never reach disk
    ("weights-diverge-before-a-checkpoint", FloatingPointError,
     r"refused to write a checkpoint at epoch \d+, global step \d+: \d+ of its \d+ tensors hold NaN/Inf.*the weights "
     r"diverged.*(the last good checkpoint on disk is .*new_run/.*: resume from it|No checkpoint of this run)",
     lambda e: e.fit(diverging_kd(e), DigitsDataModule(batch_size=1257), max_epochs=3, limit_train_batches=None,
                     limit_val_batches=0)),
    ("validation-loss-diverges", FloatingPointError,
     r"val/loss is nan at epoch 1, global step 2: the run diverged; training stopped.*the last good checkpoint on "
     r"disk is .*new_run/last.ckpt' \(epoch 0, global step 1\)",
     lambda e: e.fit(diverging_kd(e), DigitsDataModule(batch_size=1257), max_epochs=3, limit_train_batches=None,
                     limit_val_batches=1)),
    # teacher files: a wrong network never loads, a file that is not a checkpoint says what it is
    ("teacher-ckpt-of-a-deeper-network", ValueError,
     r"does not fit CifarResNet: \d+ tensors are not in it.*a bigger network of the same family",
     lambda e: e.kd(teacher="resnet20", teacher_ckpt=teacher_of(e, "resnet56"))),
    ("teacher-ckpt-is-a-text-file", ValueError, r"teacher_ckpt '.*notes.txt' is a text file \(it starts with 'best",
     lambda e: e.kd(teacher_ckpt=e.file("notes.txt", b"best teacher so far, 97%\n"))),
    ("teacher-ckpt-is-a-config", ValueError, r"is a YAML/text file \(it starts with 'seed_everything: 0'\)",
     lambda e: e.kd(teacher_ckpt=e.file("teacher.yaml", b"seed_everything: 0\ntrainer: {}\n"))),
    ("teacher-ckpt-is-an-image", ValueError, r"teacher_ckpt '.*teacher.png' is a PNG image, not a checkpoint",
     lambda e: e.kd(teacher_ckpt=image_file(e.tmp / "teacher.png"))),
    ("teacher-ckpt-is-a-folder", IsADirectoryError, r"is a folder, not a checkpoint file: name a file in it \(it holds \[",
     lambda e: e.kd(teacher_ckpt=str(e.ckpt_dir))),
    # a resume is the run it names
    ("resume-a-checkpoint-of-another-method", ValueError,
     r"is a checkpoint of lightning_kd.methods.kd.KD, but this run trains lightning_kd.methods.fitnet.FitNet",
     lambda e: e.fit(build_method("FitNet", e.teacher), ckpt_path=e.last)),
    ("cli-resume-a-checkpoint-of-another-method", ValueError, r"is a checkpoint of .*KD, but this run trains .*FitNet",
     lambda e: e.cli(f"--ckpt_path={e.last}", config="fitnet.yaml", folder=e.ckpt_dir)),
    ("resume-with-another-setting", ValueError, r"other settings than this one \(temperature: 4.0 in the checkpoint, 1.5",
     lambda e: e.fit(e.kd(temperature=1.5), ckpt_path=e.last)),
    ("cli-resume-with-another-setting", ValueError, r"other settings than this one \(.*temperature: 4.0 in the checkpoint",
     lambda e: e.cli(f"--ckpt_path={e.last}", "--model.init_args.temperature=1.5", folder=e.ckpt_dir)),
    ("resume-with-another-teacher", ValueError, r"ckpt_path '.*ckpt/last.ckpt' was trained with the teacher_ckpt of "
     r"sha256 [0-9a-f]{64} \(recorded at '.*teacher.pt'\), but '.*other_teacher.pt' now holds sha256 [0-9a-f]{64}",
     lambda e: e.fit(e.kd(teacher_ckpt=teacher_of(e, TINY_CNN)), ckpt_path=e.last)),
    ("resume-with-another-schedule-length", ValueError,
     r"another LR schedule than this run's \(T_max: 1 in the checkpoint, 3 now",
     lambda e: e.fit(e.kd(lr_scheduler=RelativeCosineAnnealingLR), ckpt_path=e.last, max_epochs=3)),
    # one run per folder
    ("second-run-into-a-used-folder", FileExistsError,
     r"already holds another run's files \(\['epoch=0-step=1.ckpt', 'last.ckpt'\]\).*--ckpt_path.*--overwrite",
     lambda e: e.fit(e.kd(), folder=e.ckpt_dir)),
    ("cli-second-run-into-a-used-folder", FileExistsError, r"already holds another run's files",
     lambda e: e.cli(folder=e.ckpt_dir)),
    ("route-recorder-into-a-used-route", FileExistsError, r"route folder '.*used_route' already holds another run's route",
     lambda e: e.fit(Supervised(student=TINY_CNN, input_shape=DIGITS_SHAPE),
                     callbacks=[RouteRecorder(num_anchors=1, at_milestones=False, dirpath=used_route_folder(e))])),
    # image folders whose content would be dropped or misread
    ("test-class-missing-from-train", ValueError, r"'.*d/test' has class folder\(s\) \['bird'\] that the train folder lacks",
     lambda e: ImageFolderDataModule(tree(e.tmp / "d", {"train": ["cat", "dog"], "test": ["bird", "cat"]}))),
    ("class-differs-only-in-case", ValueError, r"\['Cat'\].*'Cat' differs from train's 'cat' only in case",
     lambda e: ImageFolderDataModule(tree(e.tmp / "d", {"train": ["cat", "dog"], "test": ["Cat", "dog"]}))),
    ("empty-class-folder", ValueError, r"class folder '.*train/dog' holds no image",
     lambda e: e.fit(e.kd(), ImageFolderDataModule(tree(e.tmp / "d", {"train": ["cat", "dog"], "test": ["cat"]},
                                                        empty=("train/dog",)), image_size=8, batch_size=2))),
    # configs that cannot work
    ("lr-schedule-that-divides-by-zero", ValueError, r"lr_scheduler CosineAnnealingLR fails at the end of epoch 0 "
     r"\(ZeroDivisionError",
     lambda e: e.fit(e.kd(lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=0)), max_epochs=2)),
    ("all-loss-weights-zero", ValueError, r"loss weights must be >= 0 and not all 0, got \{'ce': 0, 'kd': 0\}",
     lambda e: e.fit(e.kd(ce_weight=0, kd_weight=0))),
    ("negative-loss-weight", ValueError, r"loss weights must be >= 0 and not all 0, got \{'ce': 0.1, 'kd': -1\}",
     lambda e: e.fit(e.kd(kd_weight=-1))),
    ("fsp-stage-1-covers-the-run", ValueError, r"max_epochs=2 leaves no epoch for stage 2",
     lambda e: e.fit(build_method("FSP", e.teacher, stage1_fraction=0.9), max_epochs=2)),
    ("route-manifest-lists-an-epoch-twice", ValueError, r"lists epoch\(s\) \[0\] twice",
     lambda e: RouteConstrainedTeacher(duplicated_route(e))),
    # nothing named in a file runs code (lightning_kd.trust)
    ("checkpoint-names-an-arbitrary-network", UntrustedNameError,
     r"checkpoint '.*crafted.ckpt' names the network 'helpers.payload.marker_network': a name read from a file is "
     r"never imported.*name it yourself",
     lambda e: KD.load_from_checkpoint(crafted(e, student=PAYLOAD_NETWORK))),
    ("cli-test-checkpoint-names-an-arbitrary-network", SystemExit,
     r"lightning-kd: UntrustedNameError: ckpt_path '.*crafted.ckpt' names the network 'helpers.payload",
     lambda e: e.main("test", f"--ckpt_path={crafted(e, student=PAYLOAD_NETWORK, _class_path=KD_PATH)}")),
    ("ensemble-member-names-an-arbitrary-network", UntrustedNameError,
     r"ensemble member '.*crafted.ckpt' names the network 'helpers.payload.marker_network'",
     lambda e: e.kd(teacher=ensemble_of(crafted(e, student=PAYLOAD_NETWORK)))),
    ("checkpoint-names-an-optimizer-class", UntrustedNameError,
     r"names the class or function 'helpers.payload.MarkerOptimizer' at hyper-parameter 'optimizer'",
     lambda e: KD.load_from_checkpoint(crafted(e, optimizer={"class_path": "helpers.payload.MarkerOptimizer"}))),
    ("cli-checkpoint-names-an-unimported-method", SystemExit,
     r"names the method 'helpers.payload.KD', which is not a LightningModule already imported",
     lambda e: e.main("test", f"--ckpt_path={crafted(e, _class_path='helpers.payload.KD')}")),
    ("shards-declare-a-pickle-format", ValueError,
     r"the shards in '.*shards/train' are not the converter's \(they declare \{'data_format': \['int', 'int', "
     r"'pickle'\]\}.*were not read",
     lambda e: StreamingImageDataModule(pickled_shards(e), image_size=8, resize=8, num_workers=0)),
    # every file read is finite
    ("ensemble-member-holds-nan", ValueError,
     r"ensemble member '.*nan_member.pt' holds NaN/Inf in 1 of its \d+ tensors \(e.g. \['stem.1.running_var'\]\)",
     lambda e: e.kd(teacher={**ensemble_of(e.teacher), "checkpoints": [e.teacher, nan_weights(e, "nan_member.pt")],
                             "network": TINY_CNN})),
    ("teacher-ckpt-holds-nan", ValueError,
     r"teacher_ckpt '.*nan_teacher.pt' holds NaN/Inf in 1 of its \d+ tensors.*a run that diverged",
     lambda e: e.kd(teacher_ckpt=nan_weights(e, "nan_teacher.pt"))),
    ("resume-inside-a-gradient-accumulation", ValueError,
     r"ckpt_path '.*batch2.ckpt' was written in the middle of a gradient accumulation \(1 batch\(es\) of "
     r"accumulate_grad_batches=2 waiting.*resume from a checkpoint written at an optimizer step",
     lambda e: e.fit(e.kd(), ckpt_path=accumulating_checkpoint(e), accumulate_grad_batches=2, limit_train_batches=4)),
    ("resume-with-a-replaced-route-anchor", ValueError,
     r"ckpt_path '.*rco_run/last.ckpt' was trained with the RCO route anchor epoch0000.pt of sha256 [0-9a-f]{64}, "
     r"but '.*route/epoch0000.pt' now holds sha256 [0-9a-f]{64}: another teacher",
     resume_with_a_replaced_anchor),
    ("resume-with-a-replaced-ensemble-member", ValueError,
     r"ckpt_path '.*ensemble_run/last.ckpt' was trained with the ensemble member 1 of sha256 [0-9a-f]{64}, but "
     r"'.*member1.pt' now holds sha256 [0-9a-f]{64}: another teacher",
     resume_with_a_replaced_member),
    # tools delete only what they wrote, after checking their inputs
    ("cli-overwrite-with-a-missing-teacher", SystemExit,
     r"lightning-kd: FileNotFoundError: teacher_ckpt '.*missing.pt' does not exist",
     lambda e: e.main("fit", "--overwrite=true", f"--checkpoint.dirpath={e.ckpt_dir}",
                      f"--model.init_args.teacher_ckpt={e.tmp / 'missing.pt'}")),
    ("cli-overwrite-of-the-teachers-own-folder", SystemExit,
     r"lightning-kd: ValueError: --overwrite would delete '.*ckpt/last.ckpt', which this run reads as its teacher",
     lambda e: e.main("fit", "--overwrite=true", f"--checkpoint.dirpath={e.ckpt_dir}",
                      f"--model.init_args.teacher_ckpt={e.last}", "--model.init_args.teacher=" + json.dumps(TINY_CNN))),
    ("shards-output-inside-the-tree", ValueError,
     r"the output folder '.*tree/train/shards' and the image tree '.*tree' overlap",
     lambda e: convert_into(e, Path("train/shards"))),
    ("shards-output-not-the-converters", ValueError,
     r"the output folder '.*out' holds \['train'\] but no shards.json: it is not a folder this converter wrote",
     lambda e: convert_into(e, not_the_converters(e))),
    # data read as it is
    ("shards-truncated-image", ValueError,
     r"1 image\(s\) do not decode \('.*tree/train/dog/1.png': .*nothing was written",
     lambda e: convert_into(e, e.tmp / "out", {"train/dog/1.png": png_bytes()[:40]})),
    ("cache-with-random-resized-crops", ValueError,
     r"cache_teacher_outputs is valid only without random augmentation, but StreamingImageDataModule draws",
     streamed_kd),
    ("float-image-beyond-0-1", ValueError,
     r"cannot decode image '.*train/dog/1.tif': it is a 32-bit float image with values in \[0, 300\]",
     lambda e: e.fit(e.kd(), ImageFolderDataModule(float_tiffs(e.tmp / "d", 300.0), batch_size=2))),
    # every file written is finite and sane
    ("optimizer-state-diverges", FloatingPointError,
     r"refused to write a checkpoint at epoch 1, global step 4: 1 of its \d+ tensors hold NaN/Inf.*"
     r"optimizer_states\[0\].state.\d+.exp_avg_sq.*the last good checkpoint on disk is .*new_run/last.ckpt' "
     r"\(epoch 0, global step 2\)",
     lambda e: poisoned_fit(e, inf_second_moment)),
    ("weights-beyond-the-bound", FloatingPointError,
     r"refused to write a checkpoint at epoch 1, global step 4: 1 of its \d+ tensors hold NaN/Inf or a parameter "
     r"beyond ±1e\+06 \(e.g. \['student.stem.0.weight'\]\).*new_run/last.ckpt' \(epoch 0, global step 2\)",
     lambda e: poisoned_fit(e, huge_weight)),
    ("route-anchor-diverges", FloatingPointError,
     r"refused to write the RCO route anchor '.*new_run/route/epoch0001.pt' at epoch 1, global step 4: .*"
     r"running_var.*the last good checkpoint on disk is .*new_run/last.ckpt' \(epoch 0, global step 2\)",
     lambda e: poisoned_fit(e, inf_batchnorm, Supervised(student=TINY_CNN, input_shape=DIGITS_SHAPE),
                            [RouteRecorder(num_anchors=2, at_milestones=False)])),
    # one writer per folder
    ("fit-into-a-folder-another-run-writes", FileExistsError,
     r"the checkpoint folder '.*new_run' is being written by another run \(process \d+\)",
     fit_while_another_run_writes),
    # errors one line
    ("cli-network-that-cannot-be-imported", SystemExit,
     r"lightning-kd: ValueError: Cannot import network 'nope.mod.x': ModuleNotFoundError: No module named 'nope'\n"
     r"\(LIGHTNING_KD_TRACEBACK=1 shows the traceback.\)\n$",
     lambda e: e.main("fit", "--model.init_args.student=nope.mod.x")),
]
AFTER_STEPS = {"weights-diverge-before-a-checkpoint", "validation-loss-diverges", "optimizer-state-diverges",
               "weights-beyond-the-bound", "route-anchor-diverges"}  # the input is fine until training diverges

@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error_before_training(case, env, capsys):
    name, error, message, call = case
    before = {p.name: p.read_bytes() for p in env.ckpt_dir.iterdir()}
    with pytest.raises(error) as info:
        call(env)
    text = capsys.readouterr().err if error is SystemExit else str(info.value)
    assert re.search(message, text, flags=re.S), text
    if name not in AFTER_STEPS:
        assert env.steps == [], "an optimizer step ran before the error"
    assert {p.name: p.read_bytes() for p in env.ckpt_dir.iterdir()} == before, "the earlier run's folder changed"
    written = sorted(p.name for p in env.new_dir.rglob("*.ckpt")) if env.new_dir.is_dir() else []
    assert name in AFTER_STEPS or written == [], f"the failing run wrote {written}"
    assert not (env.tmp / "payload_ran").exists()
