"""Two-stage distillation (FSP, IE-KD): the one place where a method's loop changes with the epoch."""
from __future__ import annotations

from typing import Optional

from pytorch_lightning.utilities import rank_zero_info

from lightning_kd.base import DistillationModule, attached_trainer
from lightning_kd.schedules import epoch_of


class TwoStageDistillation(DistillationModule):
    """A distillation method whose first ``stage1_fraction`` of the epochs is a different stage.

    Stage 1 covers epochs ``0 .. round(stage1_fraction * max_epochs) - 1`` (at least one epoch),
    stage 2 the rest (``stage1_fraction: 0`` where a subclass allows it: no stage 1, the whole run is stage 2), so ``--trainer.max_epochs`` shortens both stages alike. ``stage_forwards``
    says which networks each stage runs, ``(teacher, student)``; ``train/stage`` logs the stage and
    the switch is reported once. A run without a stage-2 epoch is refused before training
    (``fast_dev_run`` excepted).

    Args:
        stage1_fraction: the share of the run that is stage 1, in (0, 1) (or 0, see above).
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    name = "two-stage"
    stage_forwards = {1: (True, True), 2: (True, True)}
    stage_names = {1: "stage 1", 2: "stage 2"}

    allow_single_stage = False  # a subclass whose stage1_fraction may be 0: no stage 1

    def __init__(self, stage1_fraction: float, **kwargs):
        super().__init__(**kwargs)
        if not (0 < stage1_fraction < 1 or (self.allow_single_stage and stage1_fraction == 0)):
            raise ValueError(f"stage1_fraction is the share of the epochs spent in stage 1 and must be in "
                             f"(0, 1), got {stage1_fraction!r}.")
        self.stage1_fraction = float(stage1_fraction)
        self.epoch_stage: Optional[int] = None  # the stage of the epoch in training, set when it starts

    @property
    def stage1_epochs(self) -> int:
        return 0 if self.stage1_fraction == 0 else epoch_of(self.stage1_fraction, self.trainer.max_epochs)

    @property
    def stage(self) -> int:
        """1 during the first ``stage1_epochs`` epochs of a fit, else 2 (outside a fit: 1, or 2 for a single stage)."""
        trainer = attached_trainer(self)
        if trainer is None:
            return 2 if self.stage1_fraction == 0 else 1
        if trainer.training and self.epoch_stage is not None:
            return self.epoch_stage  # a captured step (capture_step) reads no epoch number: its graph is per stage
        return 1 if self.current_epoch < self.stage1_epochs else 2

    def forwards(self) -> tuple[bool, bool]:
        return self.stage_forwards[self.stage]

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if self.trainer.fast_dev_run or self.stage1_fraction == 0:
            return
        if max_epochs is None or max_epochs < 1:
            raise ValueError(f"{self.name} places its stages by fractions of the run: set trainer.max_epochs.")
        if self.stage1_epochs >= max_epochs:
            raise ValueError(f"max_epochs={max_epochs} leaves no epoch for stage 2: stage 1 takes "
                             f"round({self.stage1_fraction} x {max_epochs}) = {self.stage1_epochs} epoch(s) "
                             f"(at least one). Raise max_epochs or lower stage1_fraction.")

    def on_train_epoch_start(self) -> None:
        self.epoch_stage = None
        self.epoch_stage = self.stage  # the training steps of this epoch read it
        if self.current_epoch == self.stage1_epochs > 0:
            rank_zero_info(f"{self.name}: epoch {self.current_epoch}: {self.stage_names[1]} is over, "
                           f"{self.stage_names[2]} starts.")

    def training_step(self, batch, batch_idx):
        if self.logs_step_values():  # a Python number: a host-device copy, only where it is logged
            self.log("train/stage", float(self.stage), on_step=True, on_epoch=False, batch_size=len(batch[0]))
        return super().training_step(batch, batch_idx)
