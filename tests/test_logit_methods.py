"""DKD, DIST and logit standardization (LS) through the modules, and the term-weight warm-up.

The pure losses are proven equal to the authors' code in test_comparison_losses.py; here the methods'
totals are checked against those losses (or against formulas written out) with their weights, the
warm-up against mdistiller's formula, and the gradients against the teacher.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import build_method, trainer as quick_trainer
from lightning_kd.batch import Batch
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.losses import dist_loss, dkd_loss, standardize_logits
from lightning_kd.methods import DIST, DKD, KD
from lightning_kd.schedules import warmup_scale


def authors_normalize(z: torch.Tensor) -> torch.Tensor:
    """logit-standardization-KD's ``normalize``: per-sample mean and (unbiased) std, eps on the std."""
    z = z.double()
    return (z - z.mean(dim=1, keepdim=True)) / (1e-7 + z.std(dim=1, keepdim=True))


def kd_by_hand(s: torch.Tensor, t: torch.Tensor, T: float) -> float:
    """``T^2 * mean over samples of sum_c p_t (log p_t - log p_s)``, in float64."""
    log_ps, log_pt = F.log_softmax(s.double() / T, dim=1), F.log_softmax(t.double() / T, dim=1)
    return float((log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * T * T)


def outputs(model, seed: int = 0, n: int = 6):
    """A fixed digits-shaped batch and both networks' outputs on it."""
    torch.manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))
    return model.student_forward(x), model.teacher(x), y


@pytest.mark.parametrize("epochs", [240, 30, 7])
def test_warmup_is_mdistillers_formula_on_its_one_based_epochs(epochs):
    # mdistiller's DKD: min(epoch / WARMUP, 1.0), epoch counted from 1, WARMUP 20 of 240 epochs.
    warmup_epochs = max(1, round(20 * epochs / 240))
    for epoch in range(epochs):
        assert warmup_scale(1 / 12, epoch, epochs) == min((epoch + 1) / warmup_epochs, 1.0)
    assert [warmup_scale(0.0, e, epochs) for e in range(epochs)] == [1.0] * epochs


class RecordingDKD(DKD):
    """DKD that recomputes each step's total by hand from dkd_loss, and the logged warm-up factor."""

    def training_step(self, batch, batch_idx):
        total = super().training_step(batch, batch_idx)
        x, y, _ = self.unpack(batch)
        with torch.no_grad():
            s, t = self.student(x), self.teacher(x).logits
        factor = min((self.current_epoch + 1) / 2, 1.0)  # the authors' min(epoch / warmup, 1), warmup 2 epochs
        by_hand = F.cross_entropy(s, y) + factor * dkd_loss(s, t, y, 1.0, 8.0, 4.0)
        self.records.append((total.item(), by_hand.item(), self.loss_terms["dkd"].item()))
        return total

    def on_train_epoch_end(self):
        self.scales.append(self.trainer.callback_metrics["train/scale/dkd"].item())


def test_dkd_total_is_ce_plus_the_warmed_up_dkd_loss(tiny_teacher):
    model = build_method("DKD", tiny_teacher, cls=RecordingDKD, warmup=0.75)  # round(0.75 * 2) = 2 epochs
    model.records, model.scales = [], []
    quick_trainer(max_epochs=2).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert model.scales == [0.5, 1.0]
    assert len(model.records) == 4
    for total, by_hand, _ in model.records:
        assert total == pytest.approx(by_hand, rel=1e-5)
    assert all(term > 0 for *_, term in model.records)  # the term is logged unscaled


def test_dist_total_is_ce_plus_the_weighted_dist_loss(tiny_teacher):
    model = build_method("DIST", tiny_teacher, beta=0.5, gamma=3.0, temperature=2.0, ce_weight=0.7, dist_weight=2.5)
    student, teacher, y = outputs(model)
    total = model.weighted_total(model.distill_losses(student, teacher, Batch(None, y)), len(y))
    s, t = student.logits.detach(), teacher.logits
    by_hand = 0.7 * F.cross_entropy(s, y) + 2.5 * dist_loss(s, t, 0.5, 3.0, 2.0)
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_ls_makes_kds_term_kd_of_the_standardized_logits(tiny_teacher):
    model = build_method("KD", tiny_teacher, logit_standardization=True, temperature=2.0)
    student, teacher, y = outputs(model)
    kd = model.distill_losses(student, teacher, Batch(None, y))["kd"].item()
    s, t = student.logits.detach(), teacher.logits
    assert kd == pytest.approx(kd_by_hand(authors_normalize(s), authors_normalize(t), 2.0), rel=1e-4)
    assert kd != pytest.approx(kd_by_hand(s, t, 2.0), rel=1e-3)  # the option changes the term
    # LS compares the logits' relations, not their scale: a teacher scaled and shifted gives the same term.
    scaled = type(teacher)(teacher.logits * 5 + 3, teacher.features)
    assert model.distill_losses(student, scaled, Batch(None, y))["kd"].item() == pytest.approx(kd, rel=1e-4)
    plain = build_method("KD", tiny_teacher)
    assert plain.distill_losses(student, teacher, Batch(None, y))["kd"].item() == pytest.approx(kd_by_hand(s, t, 4.0), rel=1e-4)


@pytest.mark.parametrize("name", ["DKD", "DIST"])
def test_ls_on_dkd_and_dist_applies_their_loss_to_standardized_logits(name, tiny_teacher):
    model = build_method(name, tiny_teacher, logit_standardization=True, temperature=2.0)
    student, teacher, y = outputs(model)
    term = model.distill_losses(student, teacher, Batch(None, y))[name.lower()].item()
    s, t = (standardize_logits(z.detach()) for z in (student.logits, teacher.logits))
    expected = dkd_loss(s, t, y, 1.0, 8.0, 2.0) if name == "DKD" else dist_loss(s, t, 1.0, 1.0, 2.0)
    assert term == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("cls, ls", [(DKD, False), (DKD, True), (DIST, False), (DIST, True), (KD, True)])
def test_gradients_reach_the_student_only(cls, ls, tiny_teacher):
    model = build_method(cls.__name__, tiny_teacher, logit_standardization=ls)
    student, teacher, y = outputs(model)
    losses = model.distill_losses(student, teacher, Batch(None, y))
    name = next(n for n in losses if n != "ce")
    losses[name].backward()  # the distillation term alone
    assert not teacher.logits.requires_grad
    assert all(p.grad is None for p in model.teacher.net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
