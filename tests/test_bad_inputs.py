"""A catalogue of bad inputs: configs, checkpoints, data and methods.

Each case must raise an error of the expected type whose message names the problem (a regex),
before the first optimizer step, and must leave an existing checkpoint folder (``last.ckpt`` of
an earlier run, where the failing run would write its own) byte for byte as it was.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from helpers import DIGITS_SHAPE, ROOT, TINY_CNN, build_method, save_teacher, trainer as quick_trainer
from lightning_kd.datamodules import DigitsDataModule, ImageFolderDataModule
from lightning_kd.checkpoints import UnsafeCheckpointError
from lightning_kd.cli import make_cli
from lightning_kd.methods import DML, KD

WIDE = {"name": "small_cnn", "width": 8}


class StepCounter(Callback):
    def __init__(self, steps: list):
        self.steps = steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(trainer.global_step)


@dataclass
class Env:
    """What a case may use: a temporary folder, a digits teacher file and a checkpoint folder."""

    tmp: Path
    teacher: str
    ckpt_dir: Path
    steps: list = field(default_factory=list)

    def fit(self, model, data=None, ckpt_path=None, **trainer_kwargs):
        callbacks = [ModelCheckpoint(self.ckpt_dir, save_last=True), StepCounter(self.steps)]
        trainer = quick_trainer(self.tmp, enable_checkpointing=True, callbacks=callbacks, **trainer_kwargs)
        trainer.fit(model, datamodule=data or DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)

    def kd(self, teacher_ckpt: str | None = None, **kwargs):
        return build_method("KD", teacher_ckpt or self.teacher, **kwargs)

    def cli(self, *args):
        make_cli(["fit", "-c", str(ROOT / "configs/quickstart/kd.yaml"), "--trainer.logger=false",
                  f"--model.init_args.teacher_ckpt={self.teacher}", "--model.init_args.teacher=small_cnn",
                  f"--checkpoint.dirpath={self.ckpt_dir}", "--trainer.max_epochs=1", *args])

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
    env.fit(env.kd(), limit_train_batches=1)
    assert env.steps == [0] and (env.ckpt_dir / "last.ckpt").is_file()
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


def unsafe_teacher(env: Env) -> str:
    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(env.tmp / 'payload_ran')!r}, 'w').write('ran')",)

    path = env.tmp / "evil.pt"
    torch.save({"fc.weight": Payload()}, path)
    return str(path)


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
    ("resume-into-another-width", RuntimeError, r"size mismatch for student\.",
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
    ("teacher-method-without-teacher", ValueError, r"KD distills from a teacher: set both `teacher`",
     lambda e: KD(student=TINY_CNN, input_shape=DIGITS_SHAPE)),
    ("teacherless-method-given-a-teacher", SystemExit, r"lightning_kd.methods.Supervised.*Option 'teacher_ckpt' is not accepted",
     lambda e: make_cli(["fit", "-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--trainer.logger=false",
                         f"--checkpoint.dirpath={e.ckpt_dir}", f"--model.init_args.teacher_ckpt={e.teacher}"])),
    ("zero-temperature", ValueError, r"temperature must be > 0, got 0",
     lambda e: e.kd(temperature=0)),
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
]

@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error_before_training(case, env, capsys):
    _, error, message, call = case
    before = {p.name: p.read_bytes() for p in env.ckpt_dir.iterdir()}
    with pytest.raises(error) as info:
        call(env)
    text = capsys.readouterr().err if error is SystemExit else str(info.value)
    assert re.search(message, text, flags=re.S), text
    assert env.steps == [], "an optimizer step ran before the error"
    assert {p.name: p.read_bytes() for p in env.ckpt_dir.iterdir()} == before, "the checkpoint folder changed"
    assert not (env.tmp / "payload_ran").exists()
