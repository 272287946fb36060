"""FSP: the flow of solution procedure between consecutive layers.

Yim, Joo, Bae, Kim. "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
and Transfer Learning", CVPR 2017.
https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.features import check_4d, layer_names, paired_layers
from lightning_kd.losses import fsp_loss, fsp_matrix
from lightning_kd.stages import TwoStageDistillation


def consecutive_matrices(features: list[Tensor]) -> list[Tensor]:
    return [fsp_matrix(a, b) for a, b in zip(features[:-1], features[1:])]


class FSP(TwoStageDistillation):
    """FSP in one run: stage 1 matches the teacher's FSP matrices, stage 2 trains on the task.

    "A Gift from Knowledge Distillation" (Yim et al., CVPR 2017),
    https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html.
    Each consecutive pair of the listed layers forms one FSP matrix. During stage 1 (the first
    ``stage1_fraction`` of the epochs) the loss is ``fsp_weight * fsp_loss`` alone: only the layers
    that feed the listed features receive gradients (the classifier is untouched, optimizers skip
    parameters without a gradient). In stage 2 the loss is the cross-entropy alone and the teacher
    is no longer run. One optimizer and one LR schedule span both stages, so the configs' milestones
    are fractions of the whole run; RepDistiller instead gives its 30 initialization epochs an
    optimizer of their own, so its stage 2 starts without stage 1's momentum (a difference of recipe
    this class keeps, said here). Under DDP, stage 1 leaves the classifier without gradients: use
    ``strategy: ddp_find_unused_parameters_true``.

    Student and teacher must give matrices of the same ``(C1, C2)``: pairs of equal channel
    counts, e.g. a shallower student of the same widths (resnet8x4 for resnet32x4).

    Args:
        student_layers: dotted names of the student layers, at least two (default: ``stem``
            followed by ``student.stage_names``).
        teacher_layers: the teacher layers paired with them, same length (default: ``stem``
            followed by ``teacher.stage_names``).
        stage1_fraction: the share of the epochs spent matching FSP matrices (RepDistiller: 30 of
            30 + 240 epochs, 0.1111).
        fsp_weight: weight of the FSP loss in stage 1.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    name = "FSP"
    stage_forwards = {1: (True, True), 2: (False, True)}
    stage_names = {1: "stage 1 (FSP matching)", 2: "stage 2 (cross-entropy only)"}

    def __init__(self, student_layers: Optional[list[str]] = None, teacher_layers: Optional[list[str]] = None,
                 stage1_fraction: float = 0.1111, fsp_weight: float = 1.0, **kwargs):
        super().__init__(stage1_fraction=stage1_fraction, **kwargs)
        self.student_layers = layer_names(self.student, student_layers, "student_layers", ("stem",))
        self.teacher_layers = layer_names(self.teacher.net, teacher_layers, "teacher_layers", ("stem",))
        paired_layers(self.student_layers, self.teacher_layers, "FSP")
        if len(self.student_layers) < 2:
            raise ValueError(f"FSP needs at least two layers per network to form a matrix, got "
                             f"student_layers {self.student_layers}.")
        self.check_matrix_shapes(*self.watch_layers(self.student_layers, self.teacher_layers))
        self.loss_weights = {"fsp": fsp_weight, "ce": 1.0}

    def check_matrix_shapes(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        check_4d(student_features, "student")
        check_4d(teacher_features, "teacher")
        s = [student_features[name].shape[1] for name in self.student_layers]
        t = [teacher_features[name].shape[1] for name in self.teacher_layers]
        for i in range(len(s) - 1):
            if (s[i], s[i + 1]) != (t[i], t[i + 1]):
                raise ValueError(
                    f"FSP matrix {i}: student layers {self.student_layers[i]!r} -> "
                    f"{self.student_layers[i + 1]!r} have {s[i]} -> {s[i + 1]} channels, "
                    f"teacher layers {self.teacher_layers[i]!r} -> {self.teacher_layers[i + 1]!r} "
                    f"have {t[i]} -> {t[i + 1]}; the matrices must have the same shape. "
                    f"Pick layers with equal channel counts (a student of the teacher's widths).")

    def distill_losses(self, student, teacher, batch):
        if self.stage == 2:
            return {"ce": F.cross_entropy(student.logits, batch.y)}
        s_mats = consecutive_matrices([student.features[name] for name in self.student_layers])
        with torch.no_grad():
            t_mats = consecutive_matrices([teacher.features[name] for name in self.teacher_layers])
        return {"fsp": fsp_loss(s_mats, t_mats)}
