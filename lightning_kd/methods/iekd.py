"""IE-KD: inheritance and exploration knowledge distillation.

Huang, Guo, Wang, Liu, Hua, Zhang, Li. "Revisiting Knowledge Distillation: An Inheritance and
Exploration Framework", CVPR 2021. https://arxiv.org/abs/2107.00181
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_kd.base import DistillationModule
from lightning_kd.methods.at import hook_one_layer


def inheritance_loss(factor: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the per-sample L2-normalised, flattened factors.

    ``mean |f_i / ||f_i||_2 - t_i / ||t_i||_2|`` over samples ``i`` and elements (Huang et al.,
    eq. 3, with a mean instead of a sum so the scale does not grow with the factor size).
    ``target`` is used as given: detach it to keep gradients away from it. Float32 whatever
    the autocast dtype.
    """
    if factor.shape != target.shape:
        raise ValueError(f"inheritance/exploration losses need factors of equal shape, got "
                         f"{tuple(factor.shape)} and {tuple(target.shape)}; encode the student "
                         f"feature into the teacher factor's shape first.")
    f = F.normalize(factor.flatten(1).float(), dim=1)
    t = F.normalize(target.flatten(1).float(), dim=1)
    return (f - t).abs().mean()


def exploration_loss(factor: Tensor, target: Tensor) -> Tensor:
    """The negative of :func:`inheritance_loss`: minimising it pushes the factor away from the target."""
    return -inheritance_loss(factor, target)


def conv_bn_act(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1, inplace=True)]


class FactorAutoencoder(nn.Module):
    """Conv autoencoder of a feature map, the "compact knowledge extraction" of IE-KD.

    ``encoder``: two 3x3 conv-BN-LeakyReLU layers, ``channels -> channels -> factor_channels``
    (the factor keeps the spatial size); ``decoder``: the mirror image, ending in a plain 3x3
    conv so the reconstruction can take any sign. The layout follows the paraphraser of Factor
    Transfer (Kim et al., NeurIPS 2018), which IE-KD builds on.
    """

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = nn.Sequential(*conv_bn_act(channels, channels), *conv_bn_act(channels, factor_channels))
        self.decoder = nn.Sequential(*conv_bn_act(factor_channels, channels),
                                     nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, feature: Tensor) -> Tensor:
        """The reconstruction of ``feature``."""
        return self.decoder(self.encoder(feature))

    def reconstruction_error(self, feature: Tensor) -> Tensor:
        """Mean squared error of the reconstruction, in float32."""
        return F.mse_loss(self(feature).float(), feature.float())


def factor_encoder(part: Tensor, factor: Tensor) -> nn.Sequential:
    """Two 3x3 conv-BN-LeakyReLU layers from a student feature part to the factor's channels,
    behind an adaptive average pool when the spatial sizes differ."""
    c_in, c_out = part.shape[1], factor.shape[1]
    layers: list[nn.Module] = []
    if part.shape[-2:] != factor.shape[-2:]:
        layers.append(nn.AdaptiveAvgPool2d(tuple(factor.shape[-2:])))
    return nn.Sequential(*layers, *conv_bn_act(c_in, c_in), *conv_bn_act(c_in, c_out))


def split_channels(feature: Tensor) -> tuple[Tensor, Tensor]:
    """The inheritance part (first half of the channels) and the exploration part (second half)."""
    half = feature.shape[1] // 2
    return feature[:, :half], feature[:, half:]


@torch.no_grad()
def example_factor(autoencoder: FactorAutoencoder, feature: Tensor) -> Tensor:
    """The factor of an example feature, computed in eval mode (BatchNorm statistics untouched)."""
    autoencoder.eval()
    try:
        return autoencoder.encoder(feature)
    finally:
        autoencoder.train()


def check_splittable(feature: Tensor, layer: str, who: str) -> None:
    channels = feature.shape[1]
    if channels < 2 or channels % 2:
        raise ValueError(f"IE-KD splits the {who} layer {layer!r} into two channel halves (inheritance "
                         f"and exploration), but it has {channels} channels; choose a layer with an "
                         f"even number of channels (>= 2).")


def factor_channels_of(channels: int, factor_rate: float) -> int:
    if not 0 < factor_rate:
        raise ValueError(f"factor_rate must be > 0 (factor channels = rate x teacher channels), got {factor_rate}.")
    return max(1, round(channels * factor_rate))


class IEKD(DistillationModule):
    """IE-KD: ``CE + inheritance_weight * L_inh + exploration_weight * L_exp`` on encoded factors.

    "Revisiting Knowledge Distillation: An Inheritance and Exploration Framework"
    (Huang et al., CVPR 2021), https://arxiv.org/abs/2107.00181.

    Training runs in two stages inside one ``fit``:

    1. Epochs ``0 .. stage1_epochs - 1`` (compact knowledge extraction): a
       :class:`FactorAutoencoder` learns to reconstruct the frozen teacher's ``teacher_layer``
       feature (loss ``recon``, the mean squared error). The student does not train and is not
       run (its ``val/acc`` stays at its initial value), so its parameters, BatchNorm
       statistics and optimizer state are untouched.
    2. From epoch ``stage1_epochs`` on: the autoencoder is frozen (eval mode, no gradients); the
       teacher's factor is its encoder's output. The student's ``student_layer`` feature is
       split into channel halves, the inheritance and the exploration part, each mapped into
       the factor's shape by its own encoder (:func:`factor_encoder`, trained with the
       student). Losses: ``ce``, ``inh`` = :func:`inheritance_loss` (inheritance factor vs
       teacher factor) and ``exp`` = :func:`exploration_loss` (exploration factor vs teacher
       factor).

    ``max_epochs`` counts both stages: for the usual 240-epoch student recipe after a 30-epoch
    stage 1, use ``max_epochs: 270`` and shift the LR milestones by 30. ``train/stage`` is
    logged each step and the switch is reported once. One optimizer covers the autoencoder,
    the encoders and the student; only the modules of the current stage get gradients, so SGD
    leaves the others as they are. Under DDP use ``strategy: ddp_find_unused_parameters_true``
    (each stage leaves the other stage's parameters unused).

    Args:
        student_layer: dotted name of the student layer to split (an even channel count).
        teacher_layer: dotted name of the teacher layer to encode; ``None``: its last stage.
        stage1_epochs: epochs of autoencoder training before the student trains (>= 1).
        factor_rate: factor channels as a fraction of the teacher layer's channels.
        inheritance_weight: weight of ``inh``.
        exploration_weight: weight of ``exp``.
        ce_weight: weight of the cross-entropy with the labels.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, student_layer: str = "layer3", teacher_layer: str | None = None,
                 stage1_epochs: int = 30, factor_rate: float = 0.5, inheritance_weight: float = 1.0,
                 exploration_weight: float = 1.0, ce_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if int(stage1_epochs) != stage1_epochs or stage1_epochs < 1:
            raise ValueError(f"stage1_epochs must be an integer >= 1 (the autoencoder trains before the "
                             f"student distills its factors), got {stage1_epochs!r}.")
        self.stage1_epochs = int(stage1_epochs)
        if teacher_layer is None:
            teacher_layer = getattr(self.teacher, "stage_names", [None])[-1]
            if teacher_layer is None:
                raise ValueError(f"{type(self.teacher).__name__} has no `stage_names`: set `teacher_layer` "
                                 f"to a dotted module name of the teacher.")
        self.student_hooks, s_feat = hook_one_layer(self, self.student, student_layer, "student")
        self.teacher_hooks, t_feat = hook_one_layer(self, self.teacher, teacher_layer, "teacher")
        check_splittable(s_feat, student_layer, "student")
        self.autoencoder = FactorAutoencoder(t_feat.shape[1], factor_channels_of(t_feat.shape[1], factor_rate))
        factor = example_factor(self.autoencoder, t_feat)
        inherit, explore = split_channels(s_feat)
        self.inheritance_encoder = factor_encoder(inherit, factor)
        self.exploration_encoder = factor_encoder(explore, factor)
        self.loss_weights = {"recon": 1.0, "ce": ce_weight, "inh": inheritance_weight, "exp": exploration_weight}

    @property
    def stage(self) -> int:
        """1 while the autoencoder trains, 2 once the student distills (from ``stage1_epochs``)."""
        return 1 if self.current_epoch < self.stage1_epochs else 2

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == 2:  # the autoencoder is frozen in stage 2, BatchNorm statistics included
            self.autoencoder.eval()
        return self

    def on_fit_start(self) -> None:
        trainer = self.trainer
        if not trainer.fast_dev_run and trainer.max_epochs is not None and 0 <= trainer.max_epochs <= self.stage1_epochs:
            raise ValueError(f"max_epochs={trainer.max_epochs} ends before stage 2 (stage1_epochs="
                             f"{self.stage1_epochs}): the student would never train. max_epochs counts "
                             f"both stages; set it above stage1_epochs.")

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.stage1_epochs:
            rank_zero_info(f"IE-KD: stage 1 (autoencoder) done after {self.stage1_epochs} epochs; "
                           f"stage 2 (student) starts at epoch {self.current_epoch}.")
        self.train(self.training)  # freezes the autoencoder from the first stage-2 epoch on

    def reconstruction_loss(self, t_feat: Tensor) -> Tensor:
        return self.autoencoder.reconstruction_error(t_feat)

    def stage1_losses(self, batch):
        x, _ = batch
        self.teacher_forward(x)
        (t_feat,) = self.teacher_hooks.features
        self.teacher_hooks.clear()
        return None, {"recon": self.reconstruction_loss(t_feat)}

    def factors(self, s_feat: Tensor) -> tuple[Tensor, Tensor]:
        """The inheritance and exploration factors of a student feature."""
        inherit, explore = split_channels(s_feat)
        return self.inheritance_encoder(inherit), self.exploration_encoder(explore)

    def stage2_losses(self, batch):
        x, y = batch
        self.teacher_forward(x)
        s_logits = self.student(x)
        (s_feat,), (t_feat,) = self.student_hooks.features, self.teacher_hooks.features
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        with torch.no_grad():
            t_factor = self.autoencoder.encoder(t_feat)
        inh_factor, exp_factor = self.factors(s_feat)
        return s_logits, {"ce": F.cross_entropy(s_logits, y), "inh": inheritance_loss(inh_factor, t_factor),
                          "exp": exploration_loss(exp_factor, t_factor)}

    def distill_losses(self, batch):
        return self.stage1_losses(batch) if self.stage == 1 else self.stage2_losses(batch)

    def training_step(self, batch, batch_idx):
        self.log("train/stage", float(self.stage), on_step=True, on_epoch=False, batch_size=batch[0].shape[0])
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)  # student and teacher; the hooks record both
        (t_feat,) = self.teacher_hooks.features
        self.student_hooks.clear()
        self.teacher_hooks.clear()
        self.log("val/recon", self.reconstruction_loss(t_feat), batch_size=batch[0].shape[0], sync_dist=True)
