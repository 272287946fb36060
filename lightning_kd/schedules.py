"""LR schedules relative to the run's length, so ``--trainer.max_epochs 30`` shortens a 240-epoch recipe
consistently.

Their epoch numbers are fractions of the epochs the module trains for (``trainer.max_epochs``);
:class:`~lightning_kd.base.StudentModule` tells a scheduler that length with :meth:`set_epochs` right
after building it. Any torch scheduler still works in a config; it then keeps its absolute epochs.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, ReduceLROnPlateau


def check_fractions(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if any(not 0 < v <= 1 for v in values):
        raise ValueError(f"{what} are fractions of the run in (0, 1] (e.g. [0.625, 0.75, 0.875] for epochs "
                         f"150/180/210 of 240), got {values}.")
    return values


def epoch_of(fraction: float, epochs: int) -> int:
    """The epoch at ``fraction`` of a run of ``epochs`` epochs (at least 1)."""
    return max(1, round(fraction * epochs))


class RelativeMultiStepLR(MultiStepLR):
    """``MultiStepLR`` whose milestones are fractions of the run: the LR is multiplied by ``gamma``
    once ``round(m * epochs)`` epochs have passed, for every ``m`` in ``milestones``.

    Args:
        optimizer: the optimizer.
        milestones: fractions in (0, 1], e.g. ``[0.625, 0.75, 0.875]`` (epochs 150, 180, 210 of 240).
        gamma: the factor of each drop.
    """

    def __init__(self, optimizer: Optimizer, milestones: Sequence[float], gamma: float = 0.1):
        self.fractions = check_fractions(milestones, "RelativeMultiStepLR milestones")
        super().__init__(optimizer, milestones=[], gamma=gamma)

    def set_epochs(self, epochs: int) -> None:
        self.milestones = Counter(epoch_of(f, epochs) for f in self.fractions)


class RelativeCosineAnnealingLR(CosineAnnealingLR):
    """Cosine annealing from the initial LR to ``eta_min`` over ``fraction`` of the run (default: all of it).

    Args:
        optimizer: the optimizer.
        fraction: the share of the run the half cosine spans, in (0, 1].
        eta_min: the final LR.
    """

    def __init__(self, optimizer: Optimizer, fraction: float = 1.0, eta_min: float = 0.0):
        (self.fraction,) = check_fractions([fraction], "RelativeCosineAnnealingLR fraction")
        super().__init__(optimizer, T_max=1, eta_min=eta_min)

    def set_epochs(self, epochs: int) -> None:
        self.T_max = epoch_of(self.fraction, epochs)


def fit_to_run(scheduler, epochs: Optional[int]):
    """``scheduler``, told the run's length when it is one of these relative schedules."""
    if hasattr(scheduler, "set_epochs"):
        if not epochs or epochs < 1:
            raise ValueError(f"{type(scheduler).__name__} spans fractions of the run: set trainer.max_epochs.")
        scheduler.set_epochs(epochs)
    return scheduler


def check_schedule(factory, optimizer: Optimizer, epochs: Optional[int]) -> None:
    """Step the configured schedule through the whole run on a stand-in optimizer, before training, so a
    schedule that cannot work (``T_max: 0``, a negative or non-finite learning rate) fails now, with its
    epoch, instead of after an epoch of training."""
    if not epochs or epochs < 1:
        return
    stand_in = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": g["lr"]}
                                for g in optimizer.param_groups])
    scheduler = fit_to_run(factory(stand_in), epochs)
    if isinstance(scheduler, ReduceLROnPlateau):  # steps on a metric: nothing to replay
        return
    name = type(scheduler).__name__
    for epoch in range(epochs):
        try:
            stand_in.step()
            scheduler.step()
        except (ArithmeticError, ValueError, TypeError) as err:
            raise ValueError(f"lr_scheduler {name} fails at the end of epoch {epoch} ({type(err).__name__}: {err}) "
                             f"and would stop the run there: check its arguments (e.g. T_max >= 1).") from None
        bad = [g["lr"] for g in stand_in.param_groups if not (math.isfinite(g["lr"]) and g["lr"] >= 0)]
        if bad:
            raise ValueError(f"lr_scheduler {name} gives the learning rate {bad[0]} after epoch {epoch}: check "
                             f"its arguments.")


def check_warmup(fraction: float, what: str) -> float:
    """``fraction`` as a float when it is a valid warm-up length, a fraction of the run in [0, 1)."""
    fraction = float(fraction)
    if not 0 <= fraction < 1:
        raise ValueError(f"{what} is the fraction of the run over which a loss weight ramps up, in [0, 1) (e.g. "
                         f"{1 / 12:.4f} for 20 of 240 epochs; 0: no warm-up), got {fraction}.")
    return fraction


def warmup_scale(fraction: float, epoch: int, epochs: int) -> float:
    """The factor of a term's weight during a linear warm-up over ``fraction`` of a run of ``epochs`` epochs,
    in the 0-based ``epoch`` (Lightning's ``current_epoch``): ``min((epoch + 1) / W, 1)`` with
    ``W = round(fraction * epochs)`` (at least 1); 1 when ``fraction`` is 0.

    This is DKD's and ReviewKD's warm-up as their authors compute it (mdistiller,
    ``min(epoch / warmup, 1.0)`` with its 1-based epoch counter): ``1/W`` in the first epoch, the full
    weight from epoch ``W`` on (the 20th of 240 for ``fraction = 1/12``). Being a function of the epoch,
    it resumes exactly.
    """
    if fraction == 0:
        return 1.0
    return min((epoch + 1) / epoch_of(fraction, epochs), 1.0)
