"""Exact resume: 2 epochs in one go equal 1 epoch, stop, and a resume from its checkpoint.

Deterministic settings (CPU, fixed seeds). The data shuffles and pad-crops at random, so the
equality also proves that the checkpoint carries the random generators. KD is resumed through
the command line (``lightning-kd fit --ckpt_path``), which also shows that a legitimate checkpoint
passes the weights_only loaders; DML through ``trainer.fit(ckpt_path=...)``.
"""
from __future__ import annotations

import hashlib
import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers import (DIGITS_SHAPE, ROOT, TINY_CNN, Interrupted, RecordLR, SaveAfterBatches, assert_same_state,
                     save_teacher, trainer as quick_trainer)
from lightning_kd.cli import make_cli
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.methods import DML, Supervised


def assert_same_training_state(full_model, full_trainer, resumed_model, resumed_trainer) -> None:
    assert_same_state(full_model.state_dict(), resumed_model.state_dict(), "module")
    assert len(full_trainer.optimizers) == len(resumed_trainer.optimizers)
    for i, (a, b) in enumerate(zip(full_trainer.optimizers, resumed_trainer.optimizers)):
        assert_same_state(a.state_dict(), b.state_dict(), f"optimizer{i}")
        assert a.state_dict()["state"], "no optimizer state to compare (plain SGD?)"
    for i, (a, b) in enumerate(zip(full_trainer.lr_scheduler_configs, resumed_trainer.lr_scheduler_configs)):
        assert_same_state(a.scheduler.state_dict(), b.scheduler.state_dict(), f"scheduler{i}")
    assert full_trainer.global_step == resumed_trainer.global_step


@pytest.fixture
def kd_cli(tmp_path, monkeypatch):
    """Runs configs/quickstart/kd.yaml (or ``config``) for a few tiny epochs; returns the finished CLI."""
    monkeypatch.chdir(tmp_path)
    teacher = save_teacher(tmp_path / "teacher.pt", {"name": "small_cnn", "width": 64})

    def run(name: str, epochs: int, *extra: str, config: str = "kd.yaml"):
        return make_cli(["fit", "-c", str(ROOT / "configs/quickstart" / config), "--trainer.logger=false",
                         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                         f"--trainer.max_epochs={epochs}", "--trainer.limit_train_batches=3",
                         "--trainer.limit_val_batches=1", "--data.init_args.batch_size=16",
                         f"--model.init_args.teacher_ckpt={teacher}", f"--checkpoint.dirpath={tmp_path / name}",
                         *extra])
    return run


# DKD with its term's weight warmed up over both epochs (round(0.75 * 2) = 2): 1/2, then 1.
@pytest.mark.parametrize("config, extra", [("kd.yaml", ()), ("dkd.yaml", ("--model.init_args.warmup=0.75",))])
def test_kd_resume_through_the_cli_is_exact(config, extra, kd_cli, tmp_path):
    full = kd_cli("full", 2, *extra, config=config)
    # Cut off after epoch 0 of the same 2-epoch run (its schedule spans 2 epochs, as the resumed one's).
    half = kd_cli("half", 2, "--trainer.max_steps=3", *extra, config=config)
    assert half.trainer.current_epoch == 1 and half.trainer.global_step == 3
    after_one_epoch = {k: v.clone() for k, v in half.model.student.state_dict().items()}
    resumed = kd_cli("resumed", 2, f"--ckpt_path={tmp_path / 'half' / 'last.ckpt'}", "--seed_everything=1", *extra,
                     config=config)
    assert_same_training_state(full.model, full.trainer, resumed.model, resumed.trainer)
    assert any(not torch.equal(v, full.model.student.state_dict()[k]) for k, v in after_one_epoch.items()), \
        "the second epoch changed nothing, so the comparison proves nothing"


def fit_dml(tmp_path, epochs: int, name: str, ckpt_path=None, seed: int = 0):
    pl.seed_everything(seed)
    model = DML(peers=[TINY_CNN, {"name": "small_cnn", "width": 6}], input_shape=DIGITS_SHAPE,
                optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4),
                lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = quick_trainer(tmp_path, max_epochs=epochs, enable_checkpointing=True, limit_train_batches=3,
                            limit_val_batches=1,
                            callbacks=[ModelCheckpoint(tmp_path / name, save_last=True)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
    return model, trainer


def test_dml_resume_is_exact_for_every_peer_and_optimizer(tmp_path):
    full_model, full_trainer = fit_dml(tmp_path, 2, "full")
    half_model, _ = fit_dml(tmp_path, 1, "half")
    resumed_model, resumed_trainer = fit_dml(tmp_path, 2, "resumed", ckpt_path=tmp_path / "half" / "last.ckpt", seed=1)
    assert len(full_trainer.optimizers) == 2
    assert_same_training_state(full_model, full_trainer, resumed_model, resumed_trainer)
    for i, peer in enumerate(half_model.peers):
        assert any(not torch.equal(v, full_model.peers[i].state_dict()[k]) for k, v in peer.state_dict().items())


def test_a_resume_from_the_middle_of_an_epoch_is_exact(kd_cli, tmp_path):
    """Validation (and last.ckpt) twice per epoch; the run is killed right after the mid-epoch checkpoint
    of epoch 1 and resumed from it: the rest of the epoch comes in the same order, with the same random
    augmentation, and the run ends exactly like the uninterrupted one."""
    mid_epoch = ("--trainer.limit_train_batches=6", "--trainer.val_check_interval=0.5")
    full = kd_cli("full", 2, *mid_epoch)
    with pytest.raises(Interrupted):  # epoch 1's mid-epoch checkpoint is at global step 9
        kd_cli("half", 2, *mid_epoch, '--trainer.callbacks=[{"class_path": "helpers.KillAtStep", '
                                      '"init_args": {"step": 9}}]')
    saved = torch.load(tmp_path / "half" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 9)
    resumed = kd_cli("half", 2, *mid_epoch, f"--ckpt_path={tmp_path / 'half' / 'last.ckpt'}", "--seed_everything=1")
    assert_same_training_state(full.model, full.trainer, resumed.model, resumed.trainer)


# CRD: a memory bank, embedding heads and draws of its own; ReviewKD: fusion modules and a weight warm-up
# (over both epochs here: round(0.75 * 2) = 2).
@pytest.mark.parametrize("config, extra, added", [("crd.yaml", ("--model.init_args.negatives=64",), ("memory.", "embed_student.")),
                                                  ("reviewkd.yaml", ("--model.init_args.warmup=0.75",), ("fusion.",))])
def test_a_method_with_state_of_its_own_resumed_from_the_middle_of_an_epoch_is_exact(kd_cli, tmp_path, config, extra,
                                                                                     added):
    """The same kill and resume for methods with per-sample state, extra trainable modules, random draws or
    weight schedules of their own: the module's state (a bank included), optimizer and schedule end equal."""
    mid_epoch = ("--trainer.limit_train_batches=6", "--trainer.val_check_interval=0.5", *extra)
    full = kd_cli("full", 2, *mid_epoch, config=config)
    with pytest.raises(Interrupted):
        kd_cli("half", 2, *mid_epoch, '--trainer.callbacks=[{"class_path": "helpers.KillAtStep", '
                                      '"init_args": {"step": 9}}]', config=config)
    resumed = kd_cli("half", 2, *mid_epoch, f"--ckpt_path={tmp_path / 'half' / 'last.ckpt'}", "--seed_everything=1",
                     config=config)
    assert all(any(k.startswith(prefix) for k in resumed.model.state_dict()) for prefix in added)
    assert_same_training_state(full.model, full.trainer, resumed.model, resumed.trainer)


def test_a_moved_teacher_file_is_followed_by_a_resume_and_a_test(kd_cli, tmp_path):
    kd_cli("run", 2, "--trainer.max_steps=3")
    moved = tmp_path / "moved" / "teacher.pt"
    moved.parent.mkdir()
    (tmp_path / "teacher.pt").rename(moved)
    last = tmp_path / "run" / "last.ckpt"
    resumed = kd_cli("run", 2, f"--ckpt_path={last}", f"--model.init_args.teacher_ckpt={moved}")
    assert resumed.trainer.global_step == 6 and resumed.model.hparams.teacher_ckpt == str(moved)
    tested = make_cli(["test", "-c", str(ROOT / "configs/quickstart/kd.yaml"), "--trainer.logger=false",
                       f"--checkpoint.dirpath={tmp_path / 'run'}", f"--ckpt_path={last}",
                       f"--model.init_args.teacher_ckpt={moved}", "--trainer.limit_test_batches=1"])
    assert 0 <= float(tested.trainer.callback_metrics["test/acc"]) <= 1


def test_a_teacher_of_other_content_is_refused_on_resume_and_test_naming_both_digests(kd_cli, tmp_path):
    """The issue's case: the teacher retrained in place (here: other weights saved over it); also a test of the
    checkpoint and a resume naming a moved copy of the new file. Its original content, at a new path, resumes."""
    kd_cli("run", 2, "--trainer.max_steps=3")
    teacher, last = tmp_path / "teacher.pt", tmp_path / "run" / "last.ckpt"
    trained_with = hashlib.sha256(teacher.read_bytes()).hexdigest()
    recorded = torch.load(last, weights_only=True)["lightning_kd_teacher_files"]
    assert recorded == {"teacher_ckpt": {"path": str(teacher), "sha256": trained_with}}
    original = teacher.read_bytes()
    save_teacher(teacher, {"name": "small_cnn", "width": 64}, seed=7)  # retrained in place
    now = hashlib.sha256(teacher.read_bytes()).hexdigest()
    refusal = rf"ckpt_path '.*last.ckpt' was trained with the teacher_ckpt of sha256 {trained_with}.*but " \
              rf"'.*teacher.pt' now holds sha256 {now}: another teacher"
    with pytest.raises(ValueError, match=refusal):
        kd_cli("run", 2, f"--ckpt_path={last}")
    with pytest.raises(ValueError, match=refusal):
        make_cli(["test", "-c", str(ROOT / "configs/quickstart/kd.yaml"), "--trainer.logger=false",
                  f"--checkpoint.dirpath={tmp_path / 'run'}", f"--ckpt_path={last}", "--trainer.limit_test_batches=1",
                  f"--model.init_args.teacher_ckpt={teacher}"])
    moved = tmp_path / "moved.pt"
    moved.write_bytes(teacher.read_bytes())
    with pytest.raises(ValueError, match=r"\(recorded at '.*teacher.pt'\), but '.*moved.pt' now holds"):
        kd_cli("run", 2, f"--ckpt_path={last}", f"--model.init_args.teacher_ckpt={moved}")
    assert torch.load(last, weights_only=True)["global_step"] == 3  # nothing trained
    moved.write_bytes(original)
    resumed = kd_cli("run", 2, f"--ckpt_path={last}", f"--model.init_args.teacher_ckpt={moved}")
    assert resumed.trainer.global_step == 6


def test_a_lower_learning_rate_given_with_a_resume_is_applied(kd_cli, tmp_path, caplog):
    kd_cli("run", 2, "--trainer.max_steps=3")
    RecordLR.seen.clear()
    with caplog.at_level("INFO"):
        resumed = kd_cli("run", 2, f"--ckpt_path={tmp_path / 'run' / 'last.ckpt'}",
                         "--model.init_args.optimizer.init_args.lr=0.004",
                         '--trainer.callbacks=[{"class_path": "helpers.RecordLR"}]')
    assert "Resuming with lr=0.004" in caplog.text and "the checkpoint's run used 0.05" in caplog.text
    # The cosine schedule of 2 epochs continues from the new initial LR: epoch 1 trains at half of it.
    assert RecordLR.seen == {1: pytest.approx(0.004 * (1 + math.cos(math.pi / 2)) / 2)}
    assert resumed.trainer.optimizers[0].param_groups[0]["initial_lr"] == 0.004


def test_overwrite_starts_over_in_a_used_folder(kd_cli, tmp_path):
    first = kd_cli("run", 1)
    before = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["state_dict"]
    with pytest.raises(FileExistsError, match="already holds another run's files"):
        kd_cli("run", 1)
    second = kd_cli("run", 1, "--overwrite=true", "--seed_everything=5")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.ckpt", "last.ckpt", "metrics.csv"]
    assert (tmp_path / "run" / "metrics.csv").read_text().count(",val/acc,") == 1  # the second run's epoch only
    after = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(after[f"student.{k}"], v) for k, v in second.model.student.state_dict().items())
    assert not torch.equal(after["student.fc.weight"], before["student.fc.weight"]) and first is not second


def test_overwrite_checks_the_run_first_and_never_deletes_its_own_teacher(kd_cli, tmp_path):
    kd_cli("run", 1)
    teacher = tmp_path / "run" / "teacher.ckpt"  # the run's teacher_ckpt, inside the folder to overwrite
    teacher.write_bytes((tmp_path / "teacher.pt").read_bytes())
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match=r"--overwrite would delete '.*run/teacher.ckpt', which this run reads as its "
                                         r"teacher.*nothing was deleted"):
        kd_cli("run", 1, "--overwrite=true", f"--model.init_args.teacher_ckpt={teacher}")
    with pytest.raises(ValueError, match="Does not validate|teacher_ckpt '.*missing.pt' does not exist"):
        kd_cli("run", 1, "--overwrite=true", f"--model.init_args.teacher_ckpt={tmp_path / 'missing.pt'}")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_a_checkpoint_inside_a_gradient_accumulation_is_not_resumed(tmp_path):
    """Batches 0 and 1 make step 1; batch 2's gradient waits for batch 3's when the checkpoint after it is written."""
    def fit(ckpt_path=None, callbacks=()):
        pl.seed_everything(0)
        trainer = quick_trainer(tmp_path, accumulate_grad_batches=2, limit_train_batches=4, callbacks=list(callbacks))
        trainer.fit(Supervised(student=TINY_CNN, input_shape=DIGITS_SHAPE), datamodule=DigitsDataModule(batch_size=16),
                    ckpt_path=ckpt_path)
        return trainer

    fit(callbacks=[SaveAfterBatches(tmp_path, (1, 2))])
    inside, at_step = tmp_path / "batch2.ckpt", tmp_path / "batch1.ckpt"
    assert torch.load(inside, weights_only=True)["global_step"] == torch.load(at_step, weights_only=True)["global_step"]
    with pytest.raises(ValueError, match=r"'.*batch2.ckpt' was written in the middle of a gradient accumulation \(1 "
                                         r"batch\(es\) of accumulate_grad_batches=2 waiting"):
        fit(inside)
    assert fit(at_step).global_step == 2  # a checkpoint at an optimizer step resumes: the epoch's second step
