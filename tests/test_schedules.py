"""Relative LR schedules: the learning rate of every epoch against the formulas, for runs of any length."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_kd.schedules import RelativeCosineAnnealingLR, RelativeMultiStepLR, fit_to_run


def lrs(scheduler, epochs: int) -> list[float]:
    """The learning rate each epoch trains with (the scheduler steps once per epoch, after it)."""
    out = []
    for _ in range(epochs):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def sgd(lr: float = 0.05) -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("epochs, drops", [(240, [150, 180, 210]), (30, [19, 22, 26]), (8, [5, 6, 7])])
def test_multistep_drops_at_the_rounded_fractions(epochs, drops):
    # 0.625 / 0.75 / 0.875 of 240 = 150 / 180 / 210; of 30: 18.75 / 22.5 / 26.25 -> 19 / 22 / 26; of 8: 5 / 6 / 7
    scheduler = RelativeMultiStepLR(sgd(), [0.625, 0.75, 0.875], gamma=0.1)
    scheduler.set_epochs(epochs)
    expected = [0.05 * 0.1 ** sum(e >= d for d in drops) for e in range(epochs)]
    assert lrs(scheduler, epochs) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("epochs, fraction", [(30, 1.0), (7, 1.0), (20, 0.5)])
def test_cosine_follows_the_half_cosine_over_its_share_of_the_run(epochs, fraction):
    scheduler = RelativeCosineAnnealingLR(sgd(), fraction=fraction, eta_min=0.001)
    scheduler.set_epochs(epochs)
    span = round(fraction * epochs)
    expected = [0.001 + (0.05 - 0.001) * (1 + math.cos(math.pi * e / span)) / 2 for e in range(min(epochs, span + 1))]
    assert lrs(scheduler, len(expected)) == pytest.approx(expected, rel=1e-6)


def test_bad_fractions_and_a_run_without_a_length_are_refused():
    for bad in ([0.0, 0.5], [0.5, 1.5]):
        with pytest.raises(ValueError, match=r"fractions of the run in \(0, 1\]"):
            RelativeMultiStepLR(sgd(), bad)
    with pytest.raises(ValueError, match="set trainer.max_epochs"):
        fit_to_run(RelativeCosineAnnealingLR(sgd()), None)
    plain = torch.optim.lr_scheduler.StepLR(sgd(), 3)
    assert fit_to_run(plain, None) is plain  # a torch scheduler keeps its absolute epochs
