"""IE-KD: losses against the formula, sign of the exploration term, both stages, bad input."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from helpers import ie_loss_by_hand as by_hand, trainer
from lightning_kd.batch import Batch
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.losses import exploration_loss, inheritance_loss
from lightning_kd.methods import IEKD
from lightning_kd.adapters import FactorAutoencoder
from lightning_kd.models import build_network

TEACHER = {"name": "small_cnn", "width": 8}
STUDENT = {"name": "small_cnn", "width": 4}


def make_iekd(teacher_ckpt, **kwargs) -> IEKD:
    torch.manual_seed(0)
    args = dict(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, num_classes=10,
                input_shape=(1, 8, 8), stage1_fraction=0.5)
    return IEKD(**{**args, **kwargs})


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A random teacher whose BatchNorm statistics are measured on digits, so its eval-mode
    features have the scale of a trained network's (raw random ones are ~1e-2)."""
    torch.manual_seed(0)
    teacher = build_network(TEACHER, 10, 1)
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    data = DigitsDataModule(batch_size=256)
    data.setup("fit")
    with torch.no_grad():
        for batch in data.train_dataloader():
            teacher(data.on_after_batch_transfer(batch, 0)[0])
    path = tmp_path_factory.mktemp("iekd") / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return str(path)


def test_losses_match_the_formula():
    torch.manual_seed(0)
    f, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2) * 5
    assert inheritance_loss(f, t).item() == pytest.approx(by_hand(f, t), rel=1e-5)
    assert exploration_loss(f, t).item() == pytest.approx(-by_hand(f, t), rel=1e-5)
    # Scale-free per sample: rescaling one sample of either factor changes nothing.
    scaled = f.clone()
    scaled[1] *= 7
    assert inheritance_loss(scaled, t).item() == pytest.approx(inheritance_loss(f, t).item(), rel=1e-5)
    assert inheritance_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="equal shape"):
        inheritance_loss(f, t[:, :2])


@pytest.mark.parametrize("loss_fn, sign", [(exploration_loss, +1), (inheritance_loss, -1)])
def test_one_step_moves_the_factor_the_right_way(loss_fn, sign):
    torch.manual_seed(1)
    target = torch.randn(4, 8, 2, 2)
    factor = torch.randn(4, 8, 2, 2, requires_grad=True)
    before = by_hand(factor.detach(), target)
    loss_fn(factor, target).backward()
    with torch.no_grad():
        # a plain gradient step, its length 5% of the factor's norm (the raw gradient is O(1/size))
        factor -= 0.05 * factor.norm() / factor.grad.norm() * factor.grad
    after = by_hand(factor.detach(), target)
    assert sign * (after - before) > 1e-3, (before, after)


def test_stage2_losses_match_an_independent_computation(teacher_ckpt):
    model = make_iekd(teacher_ckpt, student_layer="layer2")
    model.train()
    model.autoencoder.eval()  # as in stage 2
    torch.manual_seed(2)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    student = model.student_forward(x)
    losses = model.stage2_losses(student, model.teacher(x), Batch(x, y))
    assert set(losses) == {"ce", "inh", "exp"}

    # The same quantities without hooks: run the layers by hand.
    s, t = model.student, model.teacher.net
    with torch.no_grad():
        s_feat = s.layer2(s.layer1(s.stem(x)))          # (6, 8, 4, 4)
        t_feat = t.layer3(t.layer2(t.layer1(t.stem(x))))  # the teacher's last stage, (6, 32, 2, 2)
        t_factor = model.autoencoder.encoder(t_feat)
        inh = model.inheritance_encoder(s_feat[:, :4])
        exp = model.exploration_encoder(s_feat[:, 4:])
    assert t_factor.shape == (6, 16, 2, 2) and inh.shape == exp.shape == t_factor.shape
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(s(x), y).item(), rel=1e-5)
    assert losses["inh"].item() == pytest.approx(by_hand(inh, t_factor), rel=1e-4)
    assert losses["exp"].item() == pytest.approx(-by_hand(exp, t_factor), rel=1e-4)
    assert student.logits.shape == (6, 10)
    # Gradients reach the student and its encoders, never the autoencoder or the teacher.
    sum(losses.values()).backward()
    assert model.student.stem[0].weight.grad is not None
    assert model.inheritance_encoder[-3].weight.grad is not None
    assert model.exploration_encoder[-3].weight.grad is not None
    assert all(p.grad is None for p in model.autoencoder.parameters())
    assert all(p.grad is None for p in model.teacher.net.parameters())


def digits_trainer(epochs: int, callbacks=()) -> pl.Trainer:
    return trainer(max_epochs=epochs, limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0,
                   callbacks=list(callbacks))


def test_stage1_lowers_the_reconstruction_error(teacher_ckpt):
    model = make_iekd(teacher_ckpt, stage1_fraction=0.875)  # 7 of 8 epochs (L1 learns slower than MSE)
    data = DigitsDataModule(batch_size=64)
    data.setup("fit")
    x = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)[0]

    def recon_error() -> float:
        model.eval()
        with torch.no_grad():
            return model.autoencoder.reconstruction_error(model.teacher(x).features["layer3"]).item()

    before = recon_error()
    model.train()
    student = copy.deepcopy(model.student.state_dict())
    # A run without stage 2 is refused outside fast_dev_run; train stage 1 + one stage-2 epoch.
    fit = trainer(max_epochs=8, limit_train_batches=1.0)
    recorded = []

    class AfterStage1(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 6:
                recorded.append(recon_error())
                recorded.append({k: v.clone() for k, v in pl_module.student.state_dict().items()})
                pl_module.train()

    fit.callbacks.append(AfterStage1())
    fit.fit(model, datamodule=data)
    after, student_after_stage1 = recorded
    assert after < 0.9 * before, (before, after)  # an untrained autoencoder stays at or above before
    assert all(torch.equal(student[k], student_after_stage1[k]) for k in student)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_stage_switch_at_the_configured_epoch_and_teacher_frozen(teacher_ckpt):
    model = make_iekd(teacher_ckpt)  # stage 1: 2 of 4 epochs
    parts = ["student", "autoencoder", "inheritance_encoder", "exploration_encoder", "teacher"]
    history = []

    class WhatChanged(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.before = {p: snapshot(getattr(pl_module, p)) for p in parts}

        def on_train_epoch_end(self, trainer, pl_module):
            history.append({p: changed(self.before[p], getattr(pl_module, p)) for p in parts}
                           | {"stage": trainer.callback_metrics["train/stage"].item()})

    teacher = snapshot(model.teacher)
    digits_trainer(4, [WhatChanged()]).fit(model, datamodule=DigitsDataModule(batch_size=32))
    stage1 = {"student": False, "autoencoder": True, "inheritance_encoder": False,
              "exploration_encoder": False, "teacher": False, "stage": 1.0}
    stage2 = {"student": True, "autoencoder": False, "inheritance_encoder": True,
              "exploration_encoder": True, "teacher": False, "stage": 2.0}
    assert history == [stage1, stage1, stage2, stage2]
    assert not changed(teacher, model.teacher)


@pytest.mark.parametrize("width, layer, channels", [(3, "layer1", 3), (3, "layer3", 12)])
def test_unsplittable_layer_is_refused(teacher_ckpt, width, layer, channels):
    if channels % 2 == 0:  # width 3 -> layer3 has 12 channels: splittable, must build
        make_iekd(teacher_ckpt, student={"name": "small_cnn", "width": width}, student_layer=layer)
        return
    with pytest.raises(ValueError, match=rf"{layer!r}.*{channels} channels"):
        make_iekd(teacher_ckpt, student={"name": "small_cnn", "width": width}, student_layer=layer)


def test_bad_stage_settings_are_refused(teacher_ckpt):
    for bad in (0, 1, -0.5):
        with pytest.raises(ValueError, match=r"stage1_fraction .* must be in \(0, 1\)"):
            make_iekd(teacher_ckpt, stage1_fraction=bad)
    model = make_iekd(teacher_ckpt, stage1_fraction=0.75)  # round(1.5) = 2 stage-1 epochs of 2
    with pytest.raises(ValueError, match="max_epochs=2 leaves no epoch for stage 2"):
        digits_trainer(2).fit(model, datamodule=DigitsDataModule(batch_size=32))


def test_autoencoder_is_the_authors_six_conv_layout():
    ae = FactorAutoencoder(12, 6)
    for coder, (c_in, c_out) in ((ae.encoder, (12, 6)), (ae.decoder, (6, 12))):
        convs = [m for m in coder if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(c_in, c_in), (c_in, c_out), (c_out, c_out)]
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
        kinds = [type(m).__name__ for m in coder]
        assert kinds == ["LeakyReLU"] + ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3
        assert all(m.negative_slope == 0.1 for m in coder if isinstance(m, torch.nn.LeakyReLU))
        # He-normal over the fan-out: std sqrt(2 / (9 * out_channels)), within sampling error
        for c in convs:
            expected = (2 / (9 * c.out_channels)) ** 0.5
            assert c.weight.std().item() == pytest.approx(expected, rel=0.25)
    x = torch.randn(5, 12, 4, 4)
    assert ae.encoder(x).shape == (5, 6, 4, 4) and ae(x).shape == x.shape


@pytest.mark.parametrize("reconstruction", ["l1", "mse"])
def test_reconstruction_error_is_the_named_norm(reconstruction):
    torch.manual_seed(3)
    ae = FactorAutoencoder(8, 4, reconstruction).eval()
    x = torch.randn(3, 8, 2, 2)
    with torch.no_grad():
        diff = (ae.decoder(ae.encoder(x)) - x).flatten()
        # the IE-KD authors' RecLoss(norm=p): (sum |d|^p / n)^(1/p) for p=1; MSE: sum d^2 / n
        by_hand = diff.abs().sum() / diff.numel() if reconstruction == "l1" else diff.pow(2).sum() / diff.numel()
        assert ae.reconstruction_error(x).item() == pytest.approx(by_hand.item(), rel=1e-6)
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        FactorAutoencoder(8, 4, "l2")
