"""Callbacks, one concern each: RCO's route and mutual-learning alternation (named in configs), the
guarantees every method adds through ``configure_callbacks`` (:func:`guarantees`), and RunReport and
BestEpochSummary, which the CLI adds (metrics.csv, predictions.csv, the summaries; the best epoch in wandb's)."""
from pytorch_lightning.callbacks import Callback

from lightning_kd.callbacks.best_epoch import BestEpochSummary
from lightning_kd.callbacks.finite import FiniteCheck
from lightning_kd.callbacks.guarantees import Guarantees
from lightning_kd.callbacks.mutual import MutualAlternation
from lightning_kd.callbacks.report import RunReport
from lightning_kd.callbacks.resume import ResumeCheck
from lightning_kd.callbacks.rng import RNGState
from lightning_kd.callbacks.route import RouteConstrainedTeacher, RouteRecorder
from lightning_kd.callbacks.run_folder import OneRunPerFolder
from lightning_kd.callbacks.safe_checkpoints import SafeCheckpoints

__all__ = ["BestEpochSummary", "FiniteCheck", "Guarantees", "MutualAlternation", "OneRunPerFolder", "RNGState", "ResumeCheck",
           "RouteConstrainedTeacher",
           "RouteRecorder", "RunReport", "SafeCheckpoints", "guarantees"]


def guarantees(finite_check: FiniteCheck) -> list[Callback]:
    """The guarantees of every method, whatever Trainer runs it (README, "Guarantees"): no NaN/Inf loss
    term (``finite_check``, the module's own: its interval is checked when the module is built), the RNG
    states in checkpoints, safe checkpoint reading and writing, resume checks, one run per checkpoint folder; as
    one :class:`Guarantees` callback (each callback costs Lightning's hook dispatch at every step)."""
    return [Guarantees(finite_check)]
