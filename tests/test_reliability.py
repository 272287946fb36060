"""Reliability and security: the teacher never changes, checkpoints carry no teacher, a
non-finite loss stops the run (naming the term and the step) without touching the last good
checkpoint, and a checkpoint that would run code when unpickled is refused everywhere.

"Every teacher-based method" is discovered from ``lightning_kd.methods.__all__``, so a new
method is covered as soon as it is exported (see ``helpers.build_method``).
"""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

import lightning_kd.methods as methods
from helpers import (DIGITS_SHAPE, ROOT, TINY_CNN, build_method, save_teacher, snapshot, teacher_methods,
                     trainer as quick_trainer)
from lightning_kd.callbacks.finite import MAX_ABS_PARAMETER, floating_tensors, unsound
from lightning_kd.callbacks.route import save_anchor
from lightning_kd.checkpoints import UnsafeCheckpointError, load_checkpoint_file, load_network_weights
from lightning_kd.cli import make_cli
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.methods import DML, KD, Supervised
from lightning_kd.models import build_network

TEACHER_METHODS = teacher_methods()


def digits(batch_size: int = 16) -> DigitsDataModule:
    return DigitsDataModule(batch_size=batch_size)


def all_finite(net: torch.nn.Module) -> bool:
    return all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())


# ----------------------------------------------------------------------------- the teacher
@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_teacher_never_changes_and_checkpoints_carry_no_teacher(name, tiny_teacher, tmp_path):
    pl.seed_everything(0)
    model = build_method(name, tiny_teacher)
    teacher_before, student_before = snapshot(model.teacher.net), snapshot(model.student)
    assert any(k.endswith("running_mean") for k in teacher_before), "the test needs a BatchNorm teacher"
    trainer = quick_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, datamodule=digits())

    # Bit-identical: parameters, running statistics and num_batches_tracked (both stages ran).
    for k, v in teacher_before.items():
        assert torch.equal(model.teacher.net.state_dict()[k], v), f"teacher.{k} changed"
    net = model.teacher.net
    assert not net.training and not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    assert any(not torch.equal(model.student.state_dict()[k], v) for k, v in student_before.items()), \
        "the student did not train, so the test proves nothing"

    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = load_checkpoint_file(path)  # weights_only: our own checkpoints are safe to read
    teacher_storage = {v.data_ptr() for v in model.teacher.net.state_dict().values()}
    assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher.")]
    assert not [k for k, v in model.state_dict().items() if v.data_ptr() in teacher_storage]
    assert {k for k in checkpoint["state_dict"] if k.startswith("student.")} == \
        {f"student.{k}" for k in model.student.state_dict()}

    # Loading it back takes the teacher from teacher_ckpt and the student from the checkpoint.
    loaded = type(model).load_from_checkpoint(path)
    file_teacher = build_network({"name": "small_cnn", "width": 4}, 10, 1)
    file_teacher.load_state_dict(torch.load(tiny_teacher, weights_only=True))
    for k, v in file_teacher.state_dict().items():
        assert torch.equal(loaded.teacher.net.state_dict()[k], v), k
    for k, v in model.student.state_dict().items():
        assert torch.equal(loaded.student.state_dict()[k], v), k


# ----------------------------------------------------------------------------- non-finite losses
def poisoned(cls, step: int, value: float, term: str | None = None):
    """``cls`` whose loss ``term`` (default: its last term) is multiplied by ``value`` at
    ``global_step == step`` (so its gradients are non-finite too: an update would spoil the weights)."""

    class Poisoned(cls):
        def poison(self, losses):
            if self.global_step == step:
                self.poisoned_term = term or list(losses)[-1]
                losses[self.poisoned_term] = losses[self.poisoned_term] * value
            return losses

        def distill_losses(self, student, teacher, batch):
            return self.poison(super().distill_losses(student, teacher, batch))

        def student_losses(self, student, batch):
            return self.poison(super().student_losses(student, batch))

    Poisoned.__name__ = f"Poisoned{cls.__name__}"
    return Poisoned


@pytest.mark.parametrize("name", TEACHER_METHODS + ["Supervised"])
def test_a_nan_loss_stops_the_run_before_the_weights_change(name, tiny_teacher, tmp_path):
    pl.seed_everything(0)
    if name == "Supervised":
        model = poisoned(Supervised, 1, math.nan)(student=TINY_CNN, input_shape=DIGITS_SHAPE)
    else:
        model = build_method(name, tiny_teacher, cls=poisoned(getattr(methods, name), 1, math.nan))
    captured = {}
    trainer = quick_trainer(tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[StudentAfterStep(captured)])
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(model, datamodule=digits())
    # The message names the term and the step; the check ran before that step's update.
    assert str(info.value).startswith(f"train/{model.poisoned_term} is nan at epoch 0, global step 1;")
    assert trainer.global_step == 1
    # Parameters as after step 0 (the bad forward did update BatchNorm statistics, finitely).
    for k, v in model.student.named_parameters():
        assert torch.equal(v, captured[0][k]), k
    assert all_finite(model.student)


class StudentAfterStep(Callback):
    """Stores the student's state after each training batch, by global step."""

    def __init__(self, store: dict):
        self.store = store

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.store[batch_idx] = snapshot(pl_module.student)


@pytest.mark.parametrize("term, value, shown", [("ce", math.inf, "inf"), ("kd", -math.inf, "-inf")])
def test_each_kd_term_is_checked(term, value, shown, tiny_teacher, tmp_path):
    model = build_method("KD", tiny_teacher, cls=poisoned(KD, 2, value, term))
    with pytest.raises(FloatingPointError, match=rf"^train/{term} is {shown} at epoch 0, global step 2;"):
        quick_trainer(tmp_path, limit_train_batches=4).fit(model, datamodule=digits())
    assert all_finite(model.student)


def test_an_interval_check_still_names_the_first_bad_step(tiny_teacher, tmp_path):
    # The accelerator setting: flags stay on the device and are read every 4 steps (steps 4..7).
    model = build_method("KD", tiny_teacher, cls=poisoned(KD, 5, math.nan), check_finite_every_n_steps=4)
    trainer = quick_trainer(tmp_path, limit_train_batches=10)
    with pytest.raises(FloatingPointError, match=r"^train/kd is nan at epoch 0, global step 5;"):
        trainer.fit(model, datamodule=digits())
    assert trainer.global_step == 7, "raised at the 4-step check, not every step"


class LastCheckpointBytes(Callback):
    def __init__(self, path):
        self.path, self.seen = path, {}

    def on_train_epoch_start(self, trainer, pl_module):
        if self.path.exists():
            self.seen[trainer.current_epoch] = self.path.read_bytes()


def test_the_last_good_checkpoint_stays_loadable(tiny_teacher, tmp_path):
    # Epoch 0 (steps 0-2) is good and saved; step 4 in epoch 1 is nan. With a 100-step interval
    # nothing is checked during the epoch: the check before writing the epoch-1 checkpoint stops it.
    model = build_method("KD", tiny_teacher, cls=poisoned(KD, 4, math.nan), check_finite_every_n_steps=100)
    ckpt_dir = tmp_path / "ckpt"
    recorder = LastCheckpointBytes(ckpt_dir / "last.ckpt")
    trainer = quick_trainer(tmp_path, max_epochs=3, limit_train_batches=3, limit_val_batches=1,
                            enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(ckpt_dir, filename="{epoch}", save_last=True), recorder])
    with pytest.raises(FloatingPointError, match=r"^train/kd is nan at epoch 1, global step 4;"):
        trainer.fit(model, datamodule=digits())
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0.ckpt", "last.ckpt"]
    assert (ckpt_dir / "last.ckpt").read_bytes() == recorder.seen[1]
    assert load_checkpoint_file(ckpt_dir / "last.ckpt")["global_step"] == 3
    loaded = KD.load_from_checkpoint(ckpt_dir / "last.ckpt")
    assert all_finite(loaded.student)
    assert not all_finite(model.student), "the nan did reach the live weights (interval check)"


class PoisonBatchNormBeforeValidation(Callback):
    """At the end of epoch 1's training, one BatchNorm running variance becomes inf: every loss term
    of the epoch was finite, yet the weights about to be checkpointed are not."""

    def on_validation_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            bn = next(m for m in pl_module.student.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = math.inf


def test_non_finite_weights_never_reach_disk_and_the_error_names_the_last_good_checkpoint(tiny_teacher, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    trainer = quick_trainer(tmp_path, max_epochs=3, limit_train_batches=3, limit_val_batches=1,
                            enable_checkpointing=True,
                            callbacks=[ModelCheckpoint(ckpt_dir, filename="{epoch}", save_last=True),
                                       PoisonBatchNormBeforeValidation()])
    model = build_method("KD", tiny_teacher)
    saved = {}

    class Snapshot(Callback):  # the folder's bytes when epoch 1 starts: epoch 0's good checkpoints
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                saved.update({p.name: p.read_bytes() for p in ckpt_dir.iterdir()})

    trainer.callbacks.append(Snapshot())
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(model, datamodule=digits())
    message = str(info.value)
    assert message.startswith("refused to write a checkpoint at epoch 1, global step 6: 1 of its ")
    assert "['student.stem.1.running_var']" in message and "the weights diverged" in message
    assert f"the last good checkpoint on disk is '{ckpt_dir}" in message and "(epoch 0, global step 3)" in message
    assert {p.name: p.read_bytes() for p in ckpt_dir.iterdir()} == saved and set(saved) == {"epoch=0.ckpt", "last.ckpt"}


def test_the_check_of_written_files_bounds_parameters_and_wants_every_tensor_finite(tmp_path):
    bound = MAX_ABS_PARAMETER
    checkpoint = {"state_dict": {"w": torch.tensor([bound, -bound]), "bn.running_var": torch.tensor([1e30]),
                                 "steps": torch.tensor([7])},
                  "optimizer_states": [{"state": {0: {"exp_avg_sq": torch.tensor([1e30, 2.0])}}}]}
    tensors = list(floating_tensors(checkpoint))  # integer tensors are not read
    assert [name for name, _ in tensors] == ["w", "bn.running_var", "optimizer_states[0].state.0.exp_avg_sq"]
    assert unsound(tensors, {"w"}) == []  # the bound itself passes; only parameters are bounded
    checkpoint["state_dict"]["w"][0] = bound * (1 + 2 ** -20)  # the next float32 above it
    checkpoint["optimizer_states"][0]["state"][0]["exp_avg_sq"][1] = math.nan
    assert unsound(list(floating_tensors(checkpoint)), {"w"}) == ["w", "optimizer_states[0].state.0.exp_avg_sq"]
    with pytest.raises(FloatingPointError, match=r"refused to write the RCO route anchor '.*epoch0003.pt': 1 of its 2"):
        save_anchor(tmp_path, 3, {"fc.weight": torch.ones(2), "bn.running_var": torch.tensor([math.inf])})
    assert list(tmp_path.iterdir()) == []


class PoisonedDML(DML):
    def peer_losses(self, i, output, others, batch):
        losses = super().peer_losses(i, output, others, batch)
        if i == 1 and self.global_step == 3:  # batch 1: peer 0 stepped at 2, peer 1 steps at 3
            losses["kl"] = losses["kl"] * math.nan
        return losses


def test_dml_names_the_peer_and_term(tmp_path):
    pl.seed_everything(0)
    model = PoisonedDML(peers=[TINY_CNN, TINY_CNN], input_shape=DIGITS_SHAPE)
    trainer = quick_trainer(tmp_path, limit_train_batches=3)
    with pytest.raises(FloatingPointError, match=r"^train/peer1/kl is nan at epoch 0, global step 3;"):
        trainer.fit(model, datamodule=digits())
    assert trainer.global_step == 3 and all(all_finite(peer) for peer in model.peers)


def test_bad_check_interval_is_refused(tiny_teacher):
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="check_finite_every_n_steps must be an integer >= 1"):
            build_method("KD", tiny_teacher, check_finite_every_n_steps=bad)


# ----------------------------------------------------------------------------- untrusted files
class Payload:
    """Unpickling this runs ``exec``, which writes the marker file: the attack to refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


@pytest.fixture
def crafted(tmp_path):
    """A checkpoint-shaped file with a code-running object inside, and the marker it would write."""
    marker = tmp_path / "payload_ran"
    checkpoint = {"state_dict": {"student.fc.weight": torch.zeros(10, 16)}, "epoch": 0, "global_step": 3,
                  "pytorch-lightning_version": pl.__version__, "hyper_parameters": {"note": Payload(marker)}}
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    # The payload is live: an unsafe load of a copy runs it (then the marker is removed again).
    torch.load(path, weights_only=False)
    assert marker.read_text() == "payload ran"
    marker.unlink()
    return path, marker


REFUSED = r"refused to load .* it contains Python objects other than tensors"


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_crafted_teacher_ckpt_is_refused(crafted, suffix, tmp_path):
    path, marker = crafted
    path = path.rename(path.with_suffix(suffix))
    with pytest.raises(UnsafeCheckpointError, match="refused to load teacher_ckpt " + REFUSED[16:]):
        KD(student=TINY_CNN, teacher=TINY_CNN, teacher_ckpt=str(path), input_shape=DIGITS_SHAPE)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        load_network_weights(build_network(TINY_CNN, 10, 1), path)
    assert not marker.exists()


def test_crafted_resume_checkpoint_is_refused_by_fit(crafted, tiny_teacher, tmp_path):
    path, marker = crafted
    model = build_method("KD", tiny_teacher)
    trainer = quick_trainer(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="refused to load ckpt_path " + REFUSED[16:]):
        trainer.fit(model, datamodule=digits(), ckpt_path=path)
    assert trainer.global_step == 0 and not marker.exists()
    # Even when the caller asks Lightning for an unsafe load.
    with pytest.raises(UnsafeCheckpointError):
        quick_trainer(tmp_path).fit(model, datamodule=digits(), ckpt_path=path, weights_only=False)
    assert not marker.exists()


def test_crafted_checkpoint_is_refused_by_load_from_checkpoint(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match="refused to load checkpoint " + REFUSED[16:]):
        KD.load_from_checkpoint(path)
    assert not marker.exists()


def test_crafted_resume_checkpoint_is_refused_by_the_cli(crafted, tmp_path, monkeypatch):
    path, marker = crafted
    monkeypatch.chdir(tmp_path)
    teacher = save_teacher(tmp_path / "teacher.pt", {"name": "small_cnn", "width": 64}, 10, 1)
    with pytest.raises(UnsafeCheckpointError, match="refused to load ckpt_path " + REFUSED[16:]):
        make_cli(["fit", "-c", str(ROOT / "configs/quickstart/kd.yaml"), "--trainer.logger=false",
                  f"--model.init_args.teacher_ckpt={teacher}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
                  "--trainer.max_epochs=1", f"--ckpt_path={path}"])
    assert not marker.exists()
