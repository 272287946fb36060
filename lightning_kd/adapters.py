"""Trainable adapters that methods add beside the student: FitNet's hint regressor and IE-KD's coders
(the factor autoencoder and the encoders of a feature's channel halves), shared by IE-KD and IE-DML.

A method builds them from example features (``watch_layers`` returns them) and trains them with the
student; a method file never imports another method file, so what two methods share lives here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RECONSTRUCTION_ERRORS = ("l1", "mse")


# ----------------------------------------------------------------------------- FitNets
def hint_regressor(student_feat: Tensor, teacher_feat: Tensor) -> nn.Sequential:
    """The hint regressor of FitNets (Romero et al., ICLR 2015, https://arxiv.org/abs/1412.6550) and of
    RepDistiller's benchmark: a convolution with bias that matches the teacher's size, then BatchNorm and
    ReLU (the hint itself is a post-ReLU map).

    Equal sizes: 1x1 conv. A student map twice as large: 3x3 conv of stride 2; half as large:
    4x4 transposed conv of stride 2; larger by another amount: a conv whose kernel is the
    difference plus one. A smaller student map of another ratio is refused.
    """
    c_s, c_t = student_feat.shape[1], teacher_feat.shape[1]
    (h_s, w_s), (h_t, w_t) = student_feat.shape[-2:], teacher_feat.shape[-2:]
    if (h_s, w_s) == (2 * h_t, 2 * w_t):
        conv = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
    elif (2 * h_s, 2 * w_s) == (h_t, w_t):
        conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
    elif h_s >= h_t and w_s >= w_t:
        conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
    else:
        raise ValueError(f"FitNet: the student's hint map is {h_s}x{w_s} and the teacher's {h_t}x{w_t}; the regressor "
                         f"maps a larger, an equal or a half-size student map only: choose student_layer and "
                         f"teacher_layer of such sizes.")
    return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU())


# ----------------------------------------------------------------------------- IE-KD
# Huang et al., "Revisiting Knowledge Distillation: An Inheritance and Exploration Framework", CVPR 2021,
# https://arxiv.org/abs/2107.00181.
def coder(c_in: int, c_out: int) -> nn.Sequential:
    """The IE-KD authors' three-layer coder: LeakyReLU(0.1), then three 3x3 conv-BN-LeakyReLU layers,
    ``c_in -> c_in -> c_out -> c_out``, at the input's spatial size.

    Convolutions start from He-normal weights over the fan-out and BatchNorm from (1, 0), the
    initialisation of the IE-KD authors' coder (their ``model/auto_encoder.py``).
    """
    layers: list[nn.Module] = [nn.LeakyReLU(0.1)]
    for a, b in ((c_in, c_in), (c_in, c_out), (c_out, c_out)):
        conv = nn.Conv2d(a, b, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        layers += [conv, nn.BatchNorm2d(b), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class FactorAutoencoder(nn.Module):
    """Conv autoencoder of a feature map, the "compact knowledge extraction" of IE-KD.

    ``encoder`` = :func:`coder` ``(channels -> factor_channels)``, ``decoder`` = :func:`coder`
    ``(factor_channels -> channels)``: six conv layers in all, the factor at the feature's
    spatial size, as the IE-KD authors' auto-encoder.

    Args:
        channels: channels of the feature map.
        factor_channels: channels of the factor.
        reconstruction: ``"l1"`` (default, the authors': mean absolute error) or ``"mse"``.
    """

    def __init__(self, channels: int, factor_channels: int, reconstruction: str = "l1"):
        super().__init__()
        if reconstruction not in RECONSTRUCTION_ERRORS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTION_ERRORS} (l1: the authors'), "
                             f"got {reconstruction!r}.")
        self.reconstruction = reconstruction
        self.encoder = coder(channels, factor_channels)
        self.decoder = coder(factor_channels, channels)

    def forward(self, feature: Tensor) -> Tensor:
        """The reconstruction of ``feature``."""
        return self.decoder(self.encoder(feature))

    def reconstruction_error(self, feature: Tensor) -> Tensor:
        """Mean absolute (``l1``) or squared (``mse``) error of the reconstruction, in float32."""
        error = F.l1_loss if self.reconstruction == "l1" else F.mse_loss
        return error(self(feature).float(), feature.float())


def factor_encoder(part: Tensor, factor: Tensor) -> nn.Sequential:
    """A :func:`coder` from a student feature part to the factor's channels (the authors' encoder
    of each half), behind an adaptive average pool when the spatial sizes differ."""
    layers: list[nn.Module] = []
    if part.shape[-2:] != factor.shape[-2:]:
        layers.append(nn.AdaptiveAvgPool2d(tuple(factor.shape[-2:])))
    return nn.Sequential(*layers, *coder(part.shape[1], factor.shape[1]))


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
