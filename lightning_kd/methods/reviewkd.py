"""Knowledge review: every student stage, fused with the deeper ones, distilled from the teacher's same stage.

Chen, Liu, Zhao, Jia. "Distilling Knowledge via Knowledge Review", CVPR 2021.
https://arxiv.org/abs/2104.09044
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.base import DistillationModule
from lightning_kd.comparison_parts import ReviewFusion
from lightning_kd.features import layer_names, paired_layers, preactivation
from lightning_kd.losses import hcl_loss
from lightning_kd.schedules import check_warmup


def as_maps(features: dict[str, Tensor], layers: Sequence[str]) -> list[Tensor]:
    """The features of ``layers`` in order, a pooled ``(N, C)`` feature as an ``(N, C, 1, 1)`` map."""
    return [f if f.dim() == 4 else f.flatten(1)[:, :, None, None] for f in (features[name] for name in layers)]


class ReviewKD(DistillationModule):
    """ReviewKD: ``ce_weight * CE + w(epoch) * review_weight * HCL(fused student maps, teacher maps)``.

    "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021), https://arxiv.org/abs/2104.09044.
    The student's stages and its pooled feature are fused from the deepest to the shallowest by attention
    based fusion modules (:class:`~lightning_kd.comparison_parts.ReviewFusion`, sized from one example forward,
    trained with the student, exported only when asked), each output compared with the teacher's map of the
    same stage by the hierarchical context loss (:func:`~lightning_kd.losses.hcl_loss`). As the authors, the
    teacher's stage maps are its pre-activations (``<stage>.<last block>.relu:input`` for the residual
    networks, :func:`~lightning_kd.features.preactivation`), the student's the stage outputs. The term's weight
    ramps up linearly over ``warmup`` of the run (the authors' 20 of 240 epochs; logged as
    ``train/scale/review``). Defaults are the authors' code's (dvlab-research/ReviewKD ``train.py``: CE 1,
    ``--kd-loss-weight`` 1, ``--kd-warm-up`` 20); their CIFAR-100 scripts set the weight per pair
    (resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2: 5, resnet56 -> resnet20: 0.6; mdistiller: the same).

    Args:
        review_weight: weight of the HCL term.
        ce_weight: weight of the cross-entropy with the labels.
        warmup: the fraction of the run over which the HCL term's weight ramps up, in [0, 1) (0: none).
        student_layers: the student's maps, shallow to deep; default its ``stage_names`` and ``pool``.
        teacher_layers: the teacher's maps paired with them; default the pre-activations of its stages and ``pool``.
        mid_channels: the fused width; default the authors' ``min(512, channels of the deepest student map)``.
        levels: HCL's pooled sizes (the authors' 4, 2, 1).
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, review_weight: float = 1.0, ce_weight: float = 1.0, warmup: float = 1 / 12,
                 student_layers: Optional[Sequence[str]] = None, teacher_layers: Optional[Sequence[str]] = None,
                 mid_channels: Optional[int] = None, levels: Sequence[int] = (4, 2, 1), **kwargs):
        super().__init__(**kwargs)
        if student_layers is None:
            student_layers = layer_names(self.student, None, "student_layers") + ["pool"]
        self.student_layers = list(student_layers)
        if teacher_layers is None:
            net = self.teacher.net
            teacher_layers = [preactivation(net, name) for name in layer_names(net, None, "teacher_layers")] + ["pool"]
        self.teacher_layers = list(teacher_layers)
        paired_layers(self.student_layers, self.teacher_layers, "ReviewKD")
        self.levels = tuple(int(level) for level in levels)
        student_features, teacher_features = self.watch_layers(self.student_layers, self.teacher_layers)
        student_maps = as_maps(student_features, self.student_layers)
        teacher_maps = as_maps(teacher_features, self.teacher_layers)
        self.fusion = ReviewFusion([m.shape[1] for m in student_maps], [m.shape[1] for m in teacher_maps], mid_channels)
        self.loss_weights = {"ce": ce_weight, "review": review_weight}
        self.weight_warmup = {"review": check_warmup(warmup, "ReviewKD warmup")}

    def distill_losses(self, student, teacher, batch):
        teacher_maps = as_maps(teacher.features, self.teacher_layers)
        fused = self.fusion(as_maps(student.features, self.student_layers),
                            out_sizes=[m.shape[-2:] for m in teacher_maps])
        return {"ce": F.cross_entropy(student.logits, batch.y), "review": hcl_loss(fused, teacher_maps, self.levels)}
