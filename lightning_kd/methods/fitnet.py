"""FitNets: hints from a middle layer of the teacher.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets", ICLR 2015.
https://arxiv.org/abs/1412.6550
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.base import DistillationModule
from lightning_kd.features import check_4d
from lightning_kd.losses import fitnet_loss


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
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        student_features, teacher_features = self.watch_layers([student_layer], [teacher_layer])
        check_4d(student_features, "student")
        check_4d(teacher_features, "teacher")
        self.regressor = hint_regressor(student_features[student_layer], teacher_features[teacher_layer])
        self.loss_weights = {"ce": ce_weight, "hint": hint_weight}

    def distill_losses(self, student, teacher, batch):
        hint = fitnet_loss(self.regressor(student.features[self.student_layer]), teacher.features[self.teacher_layer])
        return {"ce": F.cross_entropy(student.logits, batch[1]), "hint": hint}
