"""Attention Transfer.

Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017. https://arxiv.org/abs/1612.03928
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_kd.base import DistillationModule
from lightning_kd.features import FeatureHooks


def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two ``(N, C, H, W)`` maps to the smaller one's ``(H, W)``."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    a, b = (t if tuple(t.shape[-2:]) == size else F.adaptive_avg_pool2d(t, size) for t in (a, b))
    return a, b


def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """``normalize(f^p averaged over channels)``: an ``(N, H*W)`` map of unit L2 norm per sample."""
    return F.normalize(feat.float().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2) -> Tensor:
    """Mean squared difference of the normalized attention maps of two ``(N, C, H, W)`` features.

    The channel counts may differ; when the spatial sizes differ, the larger map is
    average-pooled to the smaller size first. Scaling a feature map by ``c > 0`` leaves the loss
    unchanged (the map is normalized).
    """
    student_feat, teacher_feat = pool_to_common_size(student_feat, teacher_feat)
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()


def layer_names(net: nn.Module, names: Optional[list[str]], arg: str, default_prefix: tuple = ()) -> list[str]:
    """``names`` if given, else ``default_prefix + net.stage_names`` (error if the net has none)."""
    if names is not None:
        return list(names)
    if not hasattr(net, "stage_names"):
        raise ValueError(f"{type(net).__name__} has no `stage_names`: set `{arg}` to the dotted "
                         f"names of the layers to use (see model.named_modules()).")
    return [*default_prefix, *net.stage_names]


def paired_layers(student_layers: list[str], teacher_layers: list[str], method: str) -> None:
    """Raise unless the student and teacher layer lists pair up one to one."""
    if len(student_layers) != len(teacher_layers) or not student_layers:
        raise ValueError(f"{method} pairs student and teacher layers one to one, but got "
                         f"{len(student_layers)} student_layers {student_layers} and "
                         f"{len(teacher_layers)} teacher_layers {teacher_layers}: give lists of "
                         f"the same, non-zero length.")


def check_4d(features: list[Tensor], layers: list[str], who: str) -> None:
    for name, feat in zip(layers, features):
        if feat.dim() != 4:
            raise ValueError(f"{who} layer {name!r} outputs shape {tuple(feat.shape)}; feature "
                             f"methods need (N, C, H, W) maps: pick a convolutional stage.")


def hook_one_layer(module: DistillationModule, net: nn.Module, layer: str, who: str) -> tuple[FeatureHooks, Tensor]:
    """Hooks on ``net``'s ``layer`` and its (N, C, H, W) feature on ``module.example_input()``."""
    hooks = FeatureHooks(net, [layer])
    feats = module.example_features(net, hooks)
    check_4d(feats, [layer], who)
    return hooks, feats[0]


class AT(DistillationModule):
    """Attention transfer: ``ce_weight * CE(s, y) + at_weight * sum_pairs at_loss(s_i, t_i, p)``.

    "Paying More Attention to Attention" (Zagoruyko & Komodakis, ICLR 2017),
    https://arxiv.org/abs/1612.03928. Defaults are the CIFAR-100 benchmark recipe of
    RepDistiller/CRD: all stage outputs, p=2, weight 1000, CE weight 1.

    Args:
        student_layers: dotted names of the student layers (default: ``student.stage_names``).
        teacher_layers: the teacher layers paired with them, same length (default:
            ``teacher.stage_names``).
        p: exponent of the attention map.
        at_weight: weight of the summed attention losses.
        ce_weight: weight of the cross-entropy with the labels.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, student_layers: Optional[list[str]] = None, teacher_layers: Optional[list[str]] = None,
                 p: float = 2, at_weight: float = 1000.0, ce_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.student_layers = layer_names(self.student, student_layers, "student_layers")
        self.teacher_layers = layer_names(self.teacher, teacher_layers, "teacher_layers")
        paired_layers(self.student_layers, self.teacher_layers, "AT")
        if not p > 0:
            raise ValueError(f"p must be > 0, got {p}; the paper uses p=2.")
        self.p = p
        self.student_hooks = FeatureHooks(self.student, self.student_layers)
        self.teacher_hooks = FeatureHooks(self.teacher, self.teacher_layers)
        check_4d(self.example_features(self.student, self.student_hooks), self.student_layers, "student")
        check_4d(self.example_features(self.teacher, self.teacher_hooks), self.teacher_layers, "teacher")
        self.loss_weights = {"ce": ce_weight, "at": at_weight}

    def distill_losses(self, batch):
        x, y = batch
        self.teacher_forward(x)
        s_logits = self.student(x)
        pairs = zip(self.student_hooks.features, self.teacher_hooks.features)
        at = sum(at_loss(s, t, self.p) for s, t in pairs)
        self.student_hooks.clear()  # the stored maps would otherwise live until the next step
        self.teacher_hooks.clear()
        return s_logits, {"ce": F.cross_entropy(s_logits, y), "at": at}
