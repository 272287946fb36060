"""FitNets: hints from a middle layer of the teacher.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets", ICLR 2015.
https://arxiv.org/abs/1412.6550
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.base import DistillationModule
from lightning_kd.methods.at import hook_one_layer


def fitnet_loss(regressed_student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between the regressed student feature and the teacher's (same shape)."""
    if regressed_student.shape != teacher.shape:
        raise ValueError(f"fitnet_loss needs equal shapes, got student {tuple(regressed_student.shape)} "
                         f"and teacher {tuple(teacher.shape)}; regress the student feature first.")
    return F.mse_loss(regressed_student.float(), teacher.float())


def hint_regressor(student_feat: Tensor, teacher_feat: Tensor) -> nn.Sequential:
    """Conv 3x3 + BN from the student's channels to the teacher's; an adaptive average pool
    first when the spatial sizes differ (a smaller student map is repeated up to size)."""
    c_s, c_t = student_feat.shape[1], teacher_feat.shape[1]
    layers: list[nn.Module] = []
    if student_feat.shape[-2:] != teacher_feat.shape[-2:]:
        layers.append(nn.AdaptiveAvgPool2d(tuple(teacher_feat.shape[-2:])))
    layers += [nn.Conv2d(c_s, c_t, 3, padding=1, bias=False), nn.BatchNorm2d(c_t)]
    return nn.Sequential(*layers)


class FitNet(DistillationModule):
    """FitNets hint: ``ce_weight * CE(s, y) + hint_weight * MSE(regressor(s_hint), t_hint)``.

    "FitNets: Hints for Thin Deep Nets" (Romero et al., ICLR 2015),
    https://arxiv.org/abs/1412.6550. As in the RepDistiller/CRD CIFAR-100 benchmark, the hint
    is trained jointly with the task in one stage (the paper trains the hint first), on the
    output of the middle stage, with weight 100 and CE weight 1. The regressor (conv + BN) is
    sized from one example forward and trained with the student.

    Args:
        student_layer: dotted name of the student's hinted (guided) layer.
        teacher_layer: dotted name of the teacher's hint layer.
        hint_weight: weight of the hint loss.
        ce_weight: weight of the cross-entropy with the labels.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, student_layer: str = "layer2", teacher_layer: str = "layer2",
                 hint_weight: float = 100.0, ce_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.student_hooks, s_feat = hook_one_layer(self, self.student, student_layer, "student")
        self.teacher_hooks, t_feat = hook_one_layer(self, self.teacher, teacher_layer, "teacher")
        self.regressor = hint_regressor(s_feat, t_feat)
        self.loss_weights = {"ce": ce_weight, "hint": hint_weight}

    def distill_losses(self, batch):
        x, y = batch
        self.teacher_forward(x)
        s_logits = self.student(x)
        (s_feat,), (t_feat,) = self.student_hooks.features, self.teacher_hooks.features
        hint = fitnet_loss(self.regressor(s_feat), t_feat)
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        return s_logits, {"ce": F.cross_entropy(s_logits, y), "hint": hint}
