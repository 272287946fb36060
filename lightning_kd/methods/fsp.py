"""FSP: the flow of solution procedure between consecutive layers.

Yim, Joo, Bae, Kim. "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
and Transfer Learning", CVPR 2017.
https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_kd.base import DistillationModule
from lightning_kd.features import FeatureHooks
from lightning_kd.methods.at import check_4d, layer_names, paired_layers, pool_to_common_size


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """``(N, C1, C2)`` Gram matrix between two maps, averaged over the ``H*W`` positions.

    ``first.flatten(2) @ second.flatten(2).transpose(1, 2) / (H*W)``, after the larger map is
    average-pooled to the smaller one's spatial size.
    """
    first, second = pool_to_common_size(first.float(), second.float())
    positions = first.shape[-2] * first.shape[-1]
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / positions


def fsp_loss(student_matrices: list[Tensor], teacher_matrices: list[Tensor]) -> Tensor:
    """Sum over the pairs of the mean squared difference of student and teacher FSP matrices."""
    if len(student_matrices) != len(teacher_matrices):
        raise ValueError(f"fsp_loss got {len(student_matrices)} student and {len(teacher_matrices)} "
                         f"teacher matrices; they must pair up one to one.")
    return sum((s - t).pow(2).mean() for s, t in zip(student_matrices, teacher_matrices))


def consecutive_matrices(features: list[Tensor]) -> list[Tensor]:
    return [fsp_matrix(a, b) for a, b in zip(features[:-1], features[1:])]


class FSP(DistillationModule):
    """FSP in one run: stage 1 matches the teacher's FSP matrices, stage 2 trains on the task.

    "A Gift from Knowledge Distillation" (Yim et al., CVPR 2017),
    https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html.
    Each consecutive pair of the listed layers forms one FSP matrix. During the first
    ``stage1_epochs`` epochs the loss is ``fsp_weight * fsp_loss`` alone: only the layers that
    feed the listed features receive gradients (the classifier is untouched, optimizers skip
    parameters without a gradient). From epoch ``stage1_epochs`` on, the loss is the
    cross-entropy alone and the teacher is no longer run. ``train/fsp_stage`` logs 1 or 2, and
    the switch is printed. As in RepDistiller (30 initialisation epochs), one optimizer and one
    LR schedule span both stages, so configs add the stage-1 epochs to the schedule. Under DDP,
    stage 1 leaves the classifier without gradients: use ``strategy: ddp_find_unused_parameters_true``.

    Student and teacher must give matrices of the same ``(C1, C2)``: pairs of equal channel
    counts, e.g. a shallower student of the same widths (resnet8x4 for resnet32x4).

    Args:
        student_layers: dotted names of the student layers, at least two (default: ``stem``
            followed by ``student.stage_names``).
        teacher_layers: the teacher layers paired with them, same length (default: ``stem``
            followed by ``teacher.stage_names``).
        stage1_epochs: number of FSP-matching epochs before the task training.
        fsp_weight: weight of the FSP loss in stage 1.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, student_layers: Optional[list[str]] = None, teacher_layers: Optional[list[str]] = None,
                 stage1_epochs: int = 30, fsp_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.student_layers = layer_names(self.student, student_layers, "student_layers", ("stem",))
        self.teacher_layers = layer_names(self.teacher, teacher_layers, "teacher_layers", ("stem",))
        paired_layers(self.student_layers, self.teacher_layers, "FSP")
        if len(self.student_layers) < 2:
            raise ValueError(f"FSP needs at least two layers per network to form a matrix, got "
                             f"student_layers {self.student_layers}.")
        if int(stage1_epochs) != stage1_epochs or stage1_epochs < 0:
            raise ValueError(f"stage1_epochs must be an integer >= 0, got {stage1_epochs}.")
        self.stage1_epochs = int(stage1_epochs)
        self.student_hooks = FeatureHooks(self.student, self.student_layers)
        self.teacher_hooks = FeatureHooks(self.teacher, self.teacher_layers)
        self.check_matrix_shapes()
        self.loss_weights = {"fsp": fsp_weight, "ce": 1.0}

    def check_matrix_shapes(self) -> None:
        s_feats = self.example_features(self.student, self.student_hooks)
        t_feats = self.example_features(self.teacher, self.teacher_hooks)
        check_4d(s_feats, self.student_layers, "student")
        check_4d(t_feats, self.teacher_layers, "teacher")
        for i in range(len(s_feats) - 1):
            s_shape = (s_feats[i].shape[1], s_feats[i + 1].shape[1])
            t_shape = (t_feats[i].shape[1], t_feats[i + 1].shape[1])
            if s_shape != t_shape:
                raise ValueError(
                    f"FSP matrix {i}: student layers {self.student_layers[i]!r} -> "
                    f"{self.student_layers[i + 1]!r} have {s_shape[0]} -> {s_shape[1]} channels, "
                    f"teacher layers {self.teacher_layers[i]!r} -> {self.teacher_layers[i + 1]!r} "
                    f"have {t_shape[0]} -> {t_shape[1]}; the matrices must have the same shape. "
                    f"Pick layers with equal channel counts (a student of the teacher's widths).")

    @property
    def stage(self) -> int:
        return 1 if self.current_epoch < self.stage1_epochs else 2

    def on_fit_start(self) -> None:
        max_epochs = self.trainer.max_epochs
        if not self.trainer.fast_dev_run and max_epochs is not None and 0 <= max_epochs <= self.stage1_epochs:
            rank_zero_warn(f"FSP: stage1_epochs={self.stage1_epochs} >= max_epochs={max_epochs}, so "
                           f"the student never trains on the task (stage 2).")

    def on_train_epoch_start(self) -> None:
        if self.stage1_epochs > 0 and self.current_epoch == self.stage1_epochs:
            rank_zero_info(f"FSP: epoch {self.current_epoch}: stage 1 (FSP matching) is over, "
                           f"stage 2 (cross-entropy only) starts.")

    def distill_losses(self, batch):
        x, y = batch
        self.log("train/fsp_stage", float(self.stage), on_step=True, on_epoch=False, batch_size=x.shape[0])
        if self.stage == 2:
            s_logits = self.student(x)
            self.student_hooks.clear()
            return s_logits, {"ce": F.cross_entropy(s_logits, y)}
        self.teacher_forward(x)
        s_logits = self.student(x)
        s_mats = consecutive_matrices(self.student_hooks.features)
        with torch.no_grad():
            t_mats = consecutive_matrices(self.teacher_hooks.features)
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        return s_logits, {"fsp": fsp_loss(s_mats, t_mats)}
