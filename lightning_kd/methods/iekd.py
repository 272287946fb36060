"""IE-KD: inheritance and exploration knowledge distillation.

Huang, Guo, Wang, Liu, Hua, Zhang, Li. "Revisiting Knowledge Distillation: An Inheritance and
Exploration Framework", CVPR 2021. https://arxiv.org/abs/2107.00181
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.adapters import (FactorAutoencoder, check_splittable, example_factor, factor_channels_of,
                                   factor_encoder, split_channels)
from lightning_kd.features import NetOutput, check_4d
from lightning_kd.losses import exploration_loss, inheritance_loss
from lightning_kd.stages import TwoStageDistillation


class IEKD(TwoStageDistillation):
    """IE-KD: ``CE + inheritance_weight * L_inh + exploration_weight * L_exp`` on encoded factors.

    "Revisiting Knowledge Distillation: An Inheritance and Exploration Framework"
    (Huang et al., CVPR 2021), https://arxiv.org/abs/2107.00181.

    Training runs in two stages inside one ``fit``:

    1. The first ``stage1_fraction`` of the epochs (compact knowledge extraction): a
       :class:`~lightning_kd.adapters.FactorAutoencoder` learns to reconstruct the frozen teacher's
       ``teacher_layer`` feature (loss ``recon``: ``reconstruction``, the authors' L1 by default). The student
       does not train and is not run (its ``val/acc`` stays at its initial value), so its parameters, BatchNorm
       statistics and optimizer state are untouched.
    2. The rest: the autoencoder is frozen (eval mode, no gradients); the teacher's factor is
       its encoder's output. The student's ``student_layer`` feature is split into channel halves,
       the inheritance and the exploration part, each mapped into the factor's shape by its own
       encoder (:func:`~lightning_kd.adapters.factor_encoder`, trained with the student). Losses: ``ce``,
       ``inh`` = :func:`~lightning_kd.losses.inheritance_loss` (inheritance factor vs teacher factor) and
       ``exp`` = :func:`~lightning_kd.losses.exploration_loss` (exploration factor vs teacher factor).

    ``max_epochs`` counts both stages, and the configs' LR milestones are fractions of the whole
    run. ``train/stage`` is logged each step and ``val/recon`` each validation. One optimizer covers
    the autoencoder, the encoders and the student; only the modules of the current stage get
    gradients, so SGD leaves the others as they are. Under DDP use ``strategy:
    ddp_find_unused_parameters_true`` (each stage leaves the other stage's parameters unused).

    Args:
        student_layer: dotted name of the student layer to split (an even channel count).
        teacher_layer: dotted name of the teacher layer to encode; ``None``: its last stage.
        stage1_fraction: the share of the epochs that trains the autoencoder, in (0, 1).
        factor_rate: factor channels as a fraction of the teacher layer's channels (the authors'
            configs: 0.5).
        reconstruction: the autoencoder's error, ``"l1"`` (default, the authors') or ``"mse"``.
        inheritance_weight: weight of ``inh`` (the authors' example config: 1).
        exploration_weight: weight of ``exp`` (the authors' example config: 1).
        ce_weight: weight of the cross-entropy with the labels.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    name = "IE-KD"
    stage_forwards = {1: (True, False), 2: (True, True)}
    stage_names = {1: "stage 1 (autoencoder)", 2: "stage 2 (student)"}

    def __init__(self, student_layer: str = "layer3", teacher_layer: str | None = None,
                 stage1_fraction: float = 0.1111, factor_rate: float = 0.5, reconstruction: str = "l1",
                 inheritance_weight: float = 1.0, exploration_weight: float = 1.0, ce_weight: float = 1.0, **kwargs):
        super().__init__(stage1_fraction=stage1_fraction, **kwargs)
        if teacher_layer is None:
            teacher_layer = getattr(self.teacher.net, "stage_names", [None])[-1]
            if teacher_layer is None:
                raise ValueError(f"{type(self.teacher.net).__name__} has no `stage_names`: set `teacher_layer` "
                                 f"to a dotted module name of the teacher.")
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        student_features, teacher_features = self.watch_layers([student_layer], [teacher_layer])
        check_4d(student_features, "student")
        check_4d(teacher_features, "teacher")
        s_feat, t_feat = student_features[student_layer], teacher_features[teacher_layer]
        check_splittable(s_feat, student_layer, "student")
        self.autoencoder = FactorAutoencoder(t_feat.shape[1], factor_channels_of(t_feat.shape[1], factor_rate),
                                             reconstruction)
        factor = example_factor(self.autoencoder, t_feat)
        inherit, explore = split_channels(s_feat)
        self.inheritance_encoder = factor_encoder(inherit, factor)
        self.exploration_encoder = factor_encoder(explore, factor)
        self.loss_weights = {"recon": 1.0, "ce": ce_weight, "inh": inheritance_weight, "exp": exploration_weight}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == 2:  # the autoencoder is frozen in stage 2, BatchNorm statistics included
            self.autoencoder.eval()
        return self

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.train(self.training)  # freezes the autoencoder from the first stage-2 epoch on

    def factors(self, s_feat: Tensor) -> tuple[Tensor, Tensor]:
        """The inheritance and exploration factors of a student feature."""
        inherit, explore = split_channels(s_feat)
        return self.inheritance_encoder(inherit), self.exploration_encoder(explore)

    def distill_losses(self, student, teacher, batch):
        if self.stage == 1:
            return {"recon": self.autoencoder.reconstruction_error(teacher.features[self.teacher_layer])}
        return self.stage2_losses(student, teacher, batch)

    def stage2_losses(self, student: NetOutput, teacher: NetOutput, batch) -> dict[str, Tensor]:
        with torch.no_grad():
            t_factor = self.autoencoder.encoder(teacher.features[self.teacher_layer])
        inh_factor, exp_factor = self.factors(student.features[self.student_layer])
        return {"ce": F.cross_entropy(student.logits, batch.y), "inh": inheritance_loss(inh_factor, t_factor),
                "exp": exploration_loss(exp_factor, t_factor)}

    def validation_extras(self, student, teacher, y):
        recon = self.autoencoder.reconstruction_error(teacher.features[self.teacher_layer])
        self.log("val/recon", recon, batch_size=len(y), sync_dist=True)
