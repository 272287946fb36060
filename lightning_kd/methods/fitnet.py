"""FitNets: hints from a middle layer of the teacher.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets", ICLR 2015.
https://arxiv.org/abs/1412.6550
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lightning_kd.adapters import hint_regressor
from lightning_kd.features import check_4d
from lightning_kd.losses import check_temperature, fitnet_loss, kd_loss
from lightning_kd.stages import TwoStageDistillation


class FitNet(TwoStageDistillation):
    """FitNets hint, in the paper's two stages or jointly with the task.

    "FitNets: Hints for Thin Deep Nets" (Romero et al., ICLR 2015), https://arxiv.org/abs/1412.6550.
    The hint loss is ``MSE(regressor(s_hint), t_hint)``; the regressor (size-matching conv with
    bias + BN + ReLU, :func:`~lightning_kd.adapters.hint_regressor`) is sized from one example forward
    and trained with the student. ``stages`` picks how it meets the task:

    - ``"hints_first"`` (default, the paper's Algorithm 1 and the authors' code): stage 1, the
      first ``stage1_fraction`` of the epochs, trains the student's layers up to the guided layer
      and the regressor on ``hint_weight * hint`` alone (the layers above it get no gradient);
      stage 2 trains the whole student with KD, ``ce_weight * CE + kd_weight * kd_loss(T)``, and no
      hint. The paper anneals the KD weight during stage 2; here it is constant.
    - ``"joint"``: ``ce_weight * CE + hint_weight * hint`` in one stage for the whole run, as the
      RepDistiller/CRD CIFAR-100 benchmark trains it (hint weight 100, CE 1), whose numbers the
      CIFAR configs reproduce; ``stage1_fraction``, ``kd_weight`` and ``temperature`` are unused.

    Args:
        student_layer: dotted name of the student's hinted (guided) layer.
        teacher_layer: dotted name of the teacher's hint layer.
        hint_weight: weight of the hint loss.
        ce_weight: weight of the cross-entropy with the labels.
        stages: ``"hints_first"`` or ``"joint"``, see above.
        stage1_fraction: with ``hints_first``, the share of the epochs that trains the hint alone.
        kd_weight, temperature: with ``hints_first``, the weight and temperature of stage 2's KD term.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    name = "FitNet"
    stage_names = {1: "stage 1 (hint)", 2: "stage 2 (KD)"}
    allow_single_stage = True  # joint: stage1_fraction 0

    def __init__(self, student_layer: str = "layer2", teacher_layer: str = "layer2",
                 hint_weight: float = 100.0, ce_weight: float = 1.0, stages: str = "hints_first",
                 stage1_fraction: float = 0.25, kd_weight: float = 1.0, temperature: float = 4.0, **kwargs):
        if stages not in ("hints_first", "joint"):
            raise ValueError(f"FitNet stages must be 'hints_first' (the paper's two stages) or 'joint' (hint and "
                             f"task together, RepDistiller's benchmark), got {stages!r}.")
        if stages == "hints_first" and not 0 < stage1_fraction < 1:
            raise ValueError(f"FitNet hints_first: stage1_fraction is the share of the epochs that trains the hint "
                             f"alone and must be in (0, 1), got {stage1_fraction!r}.")
        super().__init__(stage1_fraction=stage1_fraction if stages == "hints_first" else 0.0, **kwargs)
        self.stages = stages
        self.temperature = check_temperature(temperature)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        student_features, teacher_features = self.watch_layers([student_layer], [teacher_layer])
        check_4d(student_features, "student")
        check_4d(teacher_features, "teacher")
        self.regressor = hint_regressor(student_features[student_layer], teacher_features[teacher_layer])
        self.loss_weights = {"ce": ce_weight, "hint": hint_weight}
        if stages == "hints_first":
            self.loss_weights["kd"] = kd_weight

    def hint_loss(self, student, teacher) -> Tensor:
        return fitnet_loss(self.regressor(student.features[self.student_layer]), teacher.features[self.teacher_layer])

    def distill_losses(self, student, teacher, batch):
        if self.stages == "joint":
            return {"ce": F.cross_entropy(student.logits, batch.y), "hint": self.hint_loss(student, teacher)}
        if self.stage == 1:
            return {"hint": self.hint_loss(student, teacher)}
        return {"ce": F.cross_entropy(student.logits, batch.y),
                "kd": kd_loss(student.logits, teacher.logits, self.temperature)}
