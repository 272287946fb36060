"""capture_step: the whole training step compiled as one graph (lightning_kd.step) trains exactly as the eager
step, method by method, over 20 steps of 2 epochs (parameters, BatchNorm statistics, optimizer state and every
logged value); what it cannot capture is refused before training, naming the setting and the fix."""
from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers import DIGITS_SHAPE, TINY_CNN, RecordingLogger, build_method, save_teacher, trainer
import lightning_kd.step
from lightning_kd.callbacks import RouteConstrainedTeacher
from lightning_kd.callbacks.route import write_route
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.losses import distinct_pairs, distinct_triplets
from lightning_kd.methods import DML, KD
from lightning_kd.models import build_network

SGD = partial(torch.optim.SGD, lr=0.02, momentum=0.9, weight_decay=5e-4)  # a stable run: rounding not amplified
# name: (method, its arguments). FitNet and FSP run both stages (stage 1 is the first of the 2 epochs), DKD
# ramps its weight over both epochs (the factor changes between them), RCO swaps the teacher between them.
CASES = {
    "KD": ("KD", {}),
    "KD+LS": ("KD", {"logit_standardization": True}),
    "AT": ("AT", {}),
    "FitNet": ("FitNet", {}),
    "RKD": ("RKD", {}),
    "RCO": ("KD", {}),
    "FSP": ("FSP", {}),
    "DKD": ("DKD", {"warmup": 0.75}),
    "DIST": ("DIST", {"temperature": 1.0}),
}


def route(folder) -> str:
    """Two teacher anchors of the tiny network (random weights) as RouteRecorder writes them."""
    states = []
    for seed in range(2):
        torch.manual_seed(100 + seed)
        states.append(build_network(TINY_CNN, 10, 1).state_dict())
    write_route(folder, states)
    return str(folder)


def fit(case: str, teacher: str, capture: bool, tmp_path, **trainer_args):
    """2 epochs of 10 digits batches of ``case``; returns the module and the logged rows."""
    name, kwargs = CASES[case]
    pl.seed_everything(0)
    model = build_method(name, teacher, optimizer=SGD, capture_step=capture, **kwargs)
    logger = RecordingLogger()
    callbacks = [RouteConstrainedTeacher(route(tmp_path / "route"))] if case == "RCO" else []
    options = {"max_epochs": 2, "limit_train_batches": 10, "log_every_n_steps": 1, "logger": logger, **trainer_args}
    options["callbacks"] = callbacks + options.get("callbacks", [])
    trainer(tmp_path, **options).fit(model, datamodule=DigitsDataModule(batch_size=16))
    return model, logger.rows


def assert_close_state(captured: dict, eager: dict) -> None:
    assert captured.keys() == eager.keys()
    for key, value in eager.items():
        if value.is_floating_point():  # float32 rounding: the compiled kernels sum in another order
            scale = float(value.abs().max()) + 1e-6
            assert float((captured[key] - value).abs().max()) <= 1e-4 * scale, key
        else:
            assert torch.equal(captured[key], value), key


INDUCTOR = ("KD", "FitNet")  # compiled as in a run, one graph and two (one per stage); aot_eager for the rest


@pytest.mark.parametrize("case, backend", [(case, "aot_eager") for case in CASES] +
                         [(case, "inductor") for case in INDUCTOR])
def test_the_captured_step_trains_as_the_eager_step(case, backend, tmp_path, single_thread, monkeypatch):
    monkeypatch.setattr(lightning_kd.step, "BACKEND", backend)
    teacher = save_teacher(tmp_path / "teacher.pt", TINY_CNN, seed=1)
    eager, eager_rows = fit(case, teacher, False, tmp_path / "eager")
    captured, captured_rows = fit(case, teacher, True, tmp_path / "captured")
    assert eager.captured_step is None and captured.captured_step is None  # (after the fit: eager again)
    assert_close_state(captured.state_dict(), eager.state_dict())
    eager_momentum = [s["momentum_buffer"] for s in eager.trainer.optimizers[0].state.values()]
    captured_momentum = {id(p): s["momentum_buffer"] for p, s in captured.trainer.optimizers[0].state.items()}
    params = [p for p in captured.parameters() if p.requires_grad]
    assert len(eager_momentum) == len([p for p in params if id(p) in captured_momentum])
    steps = [(step, row) for step, row in eager_rows if any(k.startswith("train/") for k in row)]
    assert len(steps) == 20 and [s for s, _ in steps] == list(range(20))
    captured_by_step = dict(captured_rows)
    for step, row in steps:
        for key, value in row.items():
            if key.startswith("train/"):
                assert captured_by_step[step][key] == pytest.approx(value, rel=1e-3, abs=1e-5), (step, key)


def test_a_captured_run_resumed_from_a_checkpoint_equals_the_uninterrupted_one(tmp_path, single_thread, monkeypatch):
    monkeypatch.setattr(lightning_kd.step, "BACKEND", "aot_eager")
    # KD with the learning rate halved every epoch: the resumed run's step reads the restored momentum buffers
    # and the restored schedule's rate.
    teacher = save_teacher(tmp_path / "teacher.pt", TINY_CNN, seed=1)
    halving = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)

    def kd_fit(epochs: int, folder: str, ckpt_path=None, callbacks=()):
        pl.seed_everything(0)
        model = build_method("KD", teacher, optimizer=SGD, lr_scheduler=halving, capture_step=True)
        trainer(tmp_path / folder, max_epochs=epochs, limit_train_batches=10, enable_checkpointing=bool(callbacks),
                callbacks=list(callbacks)).fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
        return model

    whole = kd_fit(2, "whole")
    kd_fit(1, "first", callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    resumed = kd_fit(2, "second", ckpt_path=tmp_path / "ckpt/last.ckpt")
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == 0.02 * 0.5 ** 2
    for key, value in whole.state_dict().items():  # the same compiled kernels on the same state: bit for bit
        assert torch.equal(resumed.state_dict()[key], value), key


def refused(model, match: str, **trainer_args) -> None:
    with pytest.raises(ValueError, match=match) as info:
        trainer(max_epochs=1, **trainer_args).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert "capture_step: false" in str(info.value)


def test_what_cannot_be_captured_is_refused_before_training(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pt", TINY_CNN, seed=1)

    def kd(**kwargs):
        return build_method("KD", teacher, **{"optimizer": SGD, "capture_step": True, **kwargs})

    model = kd(optimizer=partial(torch.optim.Adam, lr=1e-3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refused(model, "the optimizer is Adam.*use torch.optim.SGD")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing trained
    refused(kd(), "accumulate_grad_batches is 2", accumulate_grad_batches=2)
    refused(kd(), "gradient_clip_val is 1.0", gradient_clip_val=1.0)
    refused(kd(optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=0.1)), "dampening=0.1")
    refused(kd(student="helpers.nets.dropout_mlp"), r"dropout \(\['student.body.3'\]\)")
    refused(DML(peers=[TINY_CNN, TINY_CNN], num_classes=10, input_shape=DIGITS_SHAPE, capture_step=True),
            "DML steps its own optimizers")


def test_a_step_that_does_not_compile_as_one_graph_is_refused_at_its_first_step(tmp_path):
    # CRD draws its negatives with a torch.Generator of its own, which the compiler cannot take into a graph.
    model = build_method("CRD", save_teacher(tmp_path / "teacher.pt", TINY_CNN, seed=1), optimizer=SGD,
                         capture_step=True)
    before = {k: v.clone() for k, v in model.student.state_dict().items()}
    with pytest.raises(RuntimeError, match="CRD's training step does not compile as one graph.*nothing was "
                                           "trained.*capture_step: false"):
        trainer(max_epochs=1).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert all(torch.equal(v, before[k]) for k, v in model.student.state_dict().items())


@pytest.mark.parametrize("n", [2, 3, 6])
def test_rkds_pairs_and_triplets_of_a_known_size_are_what_boolean_masks_select(n):
    index = torch.arange(n)
    pairs = index[:, None] != index[None, :]
    triplets = pairs[:, :, None] & pairs[:, None, :] & pairs[None, :, :]  # [j, i, k]: j != i, j != k, i != k
    assert torch.equal(distinct_pairs(n), torch.arange(n ** 2).reshape(n, n)[pairs])
    assert torch.equal(distinct_triplets(n), torch.arange(n ** 3).reshape(n, n, n)[triplets])


def test_a_non_finite_loss_of_a_captured_step_stops_the_run_naming_the_term_and_step(tmp_path, monkeypatch):
    monkeypatch.setattr(lightning_kd.step, "BACKEND", "aot_eager")

    class Poisoned(KD):  # its KD term times a factor that a callback turns to NaN before batch 3
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.register_buffer("poison", torch.ones(()))

        def distill_losses(self, student, teacher, batch):
            losses = super().distill_losses(student, teacher, batch)
            return {**losses, "kd": losses["kd"] * self.poison}

    class PoisonAt3(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 3:
                pl_module.poison.fill_(float("nan"))

    model = build_method("KD", save_teacher(tmp_path / "teacher.pt", TINY_CNN, seed=1), cls=Poisoned,
                         optimizer=SGD, capture_step=True)
    with pytest.raises(FloatingPointError, match="train/kd is nan at epoch 0, global step 3"):
        trainer(max_epochs=1, limit_train_batches=6, callbacks=[PoisonAt3()]).fit(
            model, datamodule=DigitsDataModule(batch_size=16))


def test_the_warm_up_factor_is_a_device_tensor_made_once_an_epoch(tmp_path):
    class Seen(pl.Callback):
        def __init__(self):
            self.factors = []  # (epoch, the tensor) at every training batch

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.factors.append((trainer.current_epoch, pl_module.warmup_factors()["dkd"]))

    model = build_method("DKD", save_teacher(tmp_path / "teacher.pt", TINY_CNN, seed=1), warmup=0.75)
    seen = Seen()
    trainer(max_epochs=2, limit_train_batches=3, callbacks=[seen]).fit(model, datamodule=DigitsDataModule(batch_size=16))
    for epoch in (0, 1):
        tensors = [t for e, t in seen.factors if e == epoch]
        assert len(tensors) == 3 and all(t is tensors[0] for t in tensors)  # one tensor for the epoch's steps
        assert isinstance(tensors[0], torch.Tensor) and tensors[0].device == model.device
        assert float(tensors[0]) == min((epoch + 1) / 2, 1.0)  # mdistiller's min(epoch / warmup, 1), warmup 2
