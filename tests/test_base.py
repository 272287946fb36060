"""The base classes' wiring: Supervised checkpoints as teachers, logged metrics, optimizer, export."""

import pytest
import pytorch_lightning as pl
import torch

from helpers import RecordingLogger, trainer
from lightning_kd.checkpoints import load_checkpoint_file
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.methods import KD, Supervised

TEACHER = {"name": "small_cnn", "width": 8}
STUDENT = {"name": "small_cnn", "width": 4}


def quick_trainer(tmp_path, **kwargs):
    return trainer(tmp_path, **{"limit_train_batches": 3, "limit_val_batches": 2, **kwargs})


@pytest.fixture(scope="module")
def supervised_ckpt(tmp_path_factory):
    """A real Lightning checkpoint of a Supervised run (the teacher route of the quickstart)."""
    tmp = tmp_path_factory.mktemp("teacher")
    pl.seed_everything(0)
    teacher = Supervised(student=TEACHER, num_classes=10, input_shape=(1, 8, 8))
    fit = quick_trainer(tmp, enable_checkpointing=True)
    fit.fit(teacher, datamodule=DigitsDataModule(batch_size=32))
    path = tmp / "teacher.ckpt"
    fit.save_checkpoint(path)
    return path, teacher


def test_lightning_checkpoint_loads_with_weights_only(supervised_ckpt):
    path, teacher = supervised_ckpt
    ckpt = load_checkpoint_file(path)  # weights_only=True inside
    assert "RNGState" in ckpt["callbacks"] and set(ckpt["callbacks"]["RNGState"]) >= {"torch", "numpy", "python"}
    assert all(k.startswith("student.") for k in ckpt["state_dict"])


def test_supervised_checkpoint_becomes_the_teacher(supervised_ckpt):
    path, teacher = supervised_ckpt
    kd = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path), num_classes=10, input_shape=(1, 8, 8))
    for (name, a), b in zip(teacher.student.state_dict().items(), kd.teacher.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in kd.teacher.net.parameters())
    assert not kd.teacher.net.training
    kd.train()  # Lightning calls this after every validation loop
    assert kd.student.training and not kd.teacher.net.training
    assert all(not m.training for m in kd.teacher.net.modules())


def test_optimizer_sees_only_trainable_parameters_and_scheduler_is_wired(supervised_ckpt):
    path, _ = supervised_ckpt
    kd = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path), num_classes=10, input_shape=(1, 8, 8),
            optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
            lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1))
    config = kd.configure_optimizers()
    optimizer = config["optimizer"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in kd.student.parameters()}
    assert not in_optimizer & {id(p) for p in kd.teacher.net.parameters()}
    assert isinstance(optimizer, torch.optim.Adam) and config["lr_scheduler"]["interval"] == "epoch"
    default = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path), num_classes=10,
                 input_shape=(1, 8, 8)).configure_optimizers()
    assert isinstance(default, torch.optim.SGD) and default.defaults["lr"] == 0.05


def test_validation_logs_student_teacher_and_agreement(supervised_ckpt, tmp_path):
    path, _ = supervised_ckpt
    pl.seed_everything(0)
    kd = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path), num_classes=10, input_shape=(1, 8, 8))
    dm = DigitsDataModule(batch_size=32)
    fit = quick_trainer(tmp_path)
    fit.fit(kd, datamodule=dm)
    metrics = fit.callback_metrics
    for key in ("train/ce", "train/kd", "train/loss", "val/acc", "val/acc5", "teacher/acc", "val/agreement"):
        assert key in metrics, key
    # independent check of the logged numbers on the same validation batches
    dm.trainer = None
    xs, ys = zip(*[dm.on_after_batch_transfer(b, 0) for b in list(dm.val_dataloader())[:2]])
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        s_pred, t_pred = kd.student.eval()(x).argmax(1), kd.teacher(x).logits.argmax(1)
    assert float(metrics["val/acc"]) == pytest.approx((s_pred == y).float().mean().item(), abs=1e-6)
    assert float(metrics["teacher/acc"]) == pytest.approx((t_pred == y).float().mean().item(), abs=1e-6)
    assert float(metrics["val/agreement"]) == pytest.approx((s_pred == t_pred).float().mean().item(), abs=1e-6)
    # the weighted sum is what was optimized
    assert float(metrics["train/loss"]) == pytest.approx(
        0.1 * float(metrics["train/ce"]) + 0.9 * float(metrics["train/kd"]), rel=1e-5)


def test_export_student_is_a_plain_state_dict(supervised_ckpt, tmp_path):
    _, teacher = supervised_ckpt
    teacher.export_student(tmp_path / "net.pt")
    state = torch.load(tmp_path / "net.pt", weights_only=True)
    assert state.keys() == teacher.student.state_dict().keys()


def test_a_loss_term_without_a_weight_is_an_error(supervised_ckpt):
    path, _ = supervised_ckpt

    class Unweighted(KD):
        def distill_losses(self, student, teacher, batch):
            return {**super().distill_losses(student, teacher, batch), "extra": student.logits.sum() * 0}

    model = Unweighted(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path), num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(KeyError, match=r"returned the loss terms \['extra'\] without a weight"):
        trainer(limit_train_batches=1).fit(model, datamodule=DigitsDataModule(batch_size=16))


def test_a_checkpoints_cuda_generator_state_is_restored_onto_this_processs_device(monkeypatch):
    """Rank 0 writes the checkpoint; every rank restores it. Only rank 0's device state is saved, and each
    process puts it on its own device , so every rank draws on the device as rank 0 drew; an older
    checkpoint's list of every device's state gives rank 0's device, its first."""
    from lightning_kd.callbacks import rng

    saved, restored = torch.tensor([1, 2], dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored every device"))
    states = rng.collect_rng_states()
    assert states["cuda"] is saved
    rng.restore_rng_states(states)
    older = dict(states, cuda=[saved, torch.tensor([9, 9], dtype=torch.uint8)])
    rng.restore_rng_states(older)
    assert [(state.tolist(), device) for state, device in restored] == [([1, 2], "cuda"), ([1, 2], "cuda")]


def test_shapes_left_out_are_named_in_the_errors_of_data_of_another_shape(supervised_ckpt, tmp_path):
    """A plain Trainer.fit: a module built without num_classes/input_shape meets data of another shape. The
    digits teacher file fits only a 1-channel network: its error says the shapes were not given and how to give
    them; a student-only module is refused at setup the same way, before a step."""
    path, _ = supervised_ckpt
    with pytest.raises(ValueError, match=r"input_shape not given\): pass the data's, KD\(\.\.\., "
                                         r"num_classes=data.num_classes, input_shape=data.input_shape\)"):
        KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path))
    model = Supervised(student=STUDENT)
    with pytest.raises(ValueError, match=r"input_shape=\(3, 32, 32\) \(the default: num_classes and input_shape "
                                         r"not given\), but DigitsDataModule has input_shape=\(1, 8, 8\)"):
        trainer(tmp_path).fit(model, DigitsDataModule())
    assert all(p.grad is None for p in model.parameters())  # refused before the first step


@pytest.mark.parametrize("method", ["KD", "DML"])
def test_loggers_get_the_same_step_values_whether_or_not_every_step_logs(supervised_ckpt, tmp_path, method):
    """Logging only on the steps the loggers write (the default) changes nothing that reaches them."""
    from functools import partial

    from lightning_kd.methods import DML

    path, _ = supervised_ckpt
    records = []
    for every_step in (True, False):
        pl.seed_everything(0)
        if method == "KD":
            model = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(path), num_classes=10,
                       input_shape=(1, 8, 8), log_every_step=every_step)
        else:
            model = DML(peers=[STUDENT, TEACHER], num_classes=10, input_shape=(1, 8, 8), log_every_step=every_step,
                        optimizer=partial(torch.optim.SGD, lr=0.1))
        logger = RecordingLogger()
        trainer(tmp_path, max_epochs=2, limit_train_batches=5, logger=logger, log_every_n_steps=2).fit(
            model, datamodule=DigitsDataModule(batch_size=16))
        records.append([(step, {k: v for k, v in row.items() if k.startswith("train/")}) for step, row in logger.rows])
    assert [step for step, _ in records[0]] == [1, 3, 5, 7, 9]  # steps 2, 4, ... 10 of the fit
    assert all(row for _, row in records[0]) and records[0] == records[1]
