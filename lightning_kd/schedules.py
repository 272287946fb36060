"""LR schedules relative to the run's length, so ``--trainer.max_epochs 30`` shortens a 240-epoch recipe
consistently.

Their epoch numbers are fractions of the epochs the module trains for (``trainer.max_epochs``);
:class:`~lightning_kd.base.StudentModule` tells a scheduler that length with :meth:`set_epochs` right
after building it. Any torch scheduler still works in a config; it then keeps its absolute epochs.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import pytorch_lightning as pl

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR


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


def fit_to_run(scheduler, trainer: Optional[pl.Trainer]):
    """``scheduler``, told the run's length when it is one of these relative schedules."""
    if hasattr(scheduler, "set_epochs"):
        epochs = trainer.max_epochs if trainer is not None else None
        if not epochs or epochs < 1:
            raise ValueError(f"{type(scheduler).__name__} spans fractions of the run: set trainer.max_epochs.")
        scheduler.set_epochs(epochs)
    return scheduler
