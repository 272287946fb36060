"""The trainable and stateful pieces of CRD and ReviewKD (torch only; their losses are in losses.py).

CRD (Tian et al., "Contrastive Representation Distillation", ICLR 2020, https://arxiv.org/abs/1910.10699):
:class:`EmbedHead` (the student's and the teacher's projection), :class:`ContrastMemory` (one
momentum-updated embedding per training sample and side) and :class:`ContrastSampler` (which
memory rows a sample is contrasted with). ReviewKD (Chen et al., "Distilling Knowledge via Knowledge
Review", CVPR 2021, https://arxiv.org/abs/2104.09044): :class:`AttentionFusion` (ABF) and
:class:`ReviewFusion`, the chain of them from the deepest student stage to the shallowest.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lightning_kd.losses import contrast_scores


# ----------------------------------------------------------------------------- CRD
class EmbedHead(nn.Module):
    """A linear map of the flattened feature, L2-normalized per sample (CRD's ``g^S`` and ``g^T``).

    Args:
        in_features: the flattened feature's size (the penultimate feature: 256 for resnet8x4).
        out_features: the embedding size (the authors' 128).
    """

    def __init__(self, in_features: int, out_features: int = 128):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, feature: Tensor) -> Tensor:
        return F.normalize(self.linear(feature.flatten(1)), dim=1)


class ContrastMemory(nn.Module):
    """CRD's memory bank: one embedding per training sample for the student and one for the teacher,
    each row the momentum average of that sample's embeddings, renormalized to unit length.

    A sample's student embedding is scored against the teacher memory's rows (its positive and its
    negatives) and its teacher embedding against the student memory's rows, as the authors do. The
    scores are divided by a constant ``Z`` per side, ``mean score * num_samples`` of the first batch
    (the authors' estimate of the partition function), kept in ``normalizers`` and in checkpoints.
    Rows start uniform in ``+-1 / sqrt(dim / 3)``, as the authors'.

    Args:
        num_samples: the training set's size (one row per sample index).
        dim: the embedding size (128).
        temperature: tau of the scores ``exp(<row, embedding> / tau)`` (the authors' ``nce_t`` 0.07).
        momentum: the weight of a row's old value in its update (the authors' ``nce_m`` 0.5).
    """

    def __init__(self, num_samples: int, dim: int = 128, temperature: float = 0.07, momentum: float = 0.5):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"ContrastMemory momentum must be in [0, 1), got {momentum}; CRD uses 0.5.")
        self.num_samples, self.temperature, self.momentum = num_samples, float(temperature), float(momentum)
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student_memory", torch.rand(num_samples, dim) * (2 * bound) - bound)
        self.register_buffer("teacher_memory", torch.rand(num_samples, dim) * (2 * bound) - bound)
        # Z of the student's and the teacher's scores; negative until the first batch sets them.
        self.register_buffer("normalizers", torch.full((2,), -1.0))

    def forward(self, student_embed: Tensor, teacher_embed: Tensor, index: Tensor,
                contrast_index: Tensor) -> tuple[Tensor, Tensor]:
        """Scores from the rows as they are, then the rows of ``index`` updated: the authors' order.

        Args:
            student_embed, teacher_embed: ``(N, dim)`` unit embeddings of the batch.
            index: ``(N,)`` the samples' indices in the training set (the rows updated).
            contrast_index: ``(N, K + 1)`` the rows each sample is scored against, its positive
                first (see :class:`ContrastSampler`).

        Returns:
            The student's and the teacher's ``(N, K + 1)`` scores divided by ``Z``, for
            :func:`~lightning_kd.losses.crd_nce_loss`.
        """
        scores = self.scores(student_embed, teacher_embed, contrast_index)
        self.update(index, student_embed, teacher_embed)
        return scores

    def scores(self, student_embed: Tensor, teacher_embed: Tensor, contrast_index: Tensor,
               average: Optional[Callable[[Tensor], None]] = None) -> tuple[Tensor, Tensor]:
        """The normalized scores (see :meth:`forward`); sets ``Z`` on the first call, without a host sync.
        ``average``: replaces, in place, this process's mean scores by their mean over the processes (under
        DDP, so that ``Z`` is the global batch's, the same on every process); called on every call."""
        student = contrast_scores(student_embed, self.teacher_memory[contrast_index], self.temperature)
        teacher = contrast_scores(teacher_embed, self.student_memory[contrast_index], self.temperature)
        with torch.no_grad():
            first = torch.stack([student.mean(), teacher.mean()]).float()
            if average is not None:
                average(first)
            first = first * self.num_samples
            self.normalizers.copy_(torch.where(self.normalizers < 0, first, self.normalizers))
        z = self.normalizers.clone()  # a copy: the graph must not see a later in-place change
        return student / z[0], teacher / z[1]

    @torch.no_grad()
    def update(self, index: Tensor, student_embed: Tensor, teacher_embed: Tensor) -> None:
        """``row = normalize(momentum * row + (1 - momentum) * embedding)`` for the rows of ``index``."""
        for memory, embed in ((self.student_memory, student_embed), (self.teacher_memory, teacher_embed)):
            rows = memory[index] * self.momentum + embed.detach().float() * (1 - self.momentum)
            memory[index] = F.normalize(rows, dim=1)


NEGATIVE_MODES = ("other_classes", "any")
POSITIVE_MODES = ("exact", "relax")


class ContrastSampler(nn.Module):
    """Draws the memory rows each sample is contrasted with: ``(N, 1 + negatives)``, its positive first.

    Built once from the training set (its checks run then, and a step never waits on the host);
    its buffers follow the module's device and stay out of checkpoints (the data rebuilds them).

    Args:
        negatives: ``K``, the negatives per sample (the authors' ``nce_k`` 16384).
        num_samples: the training set's size.
        train_labels: ``(num_samples,)`` the training set's labels; needed by ``other_classes`` and ``relax``.
        mode: ``other_classes`` (default, what the authors' training code ships: their CRD datasets
            draw a sample's negatives among the samples of the other classes) or ``any`` (uniform over
            the whole training set, the sample itself included: their memory's fallback when it is
            given no indices).
        positive: ``exact`` (default: the sample itself) or ``relax`` (a random sample of its class,
            itself included): the authors' ``--mode``.
        replacement: ``None`` (default, the authors'): ``other_classes`` draws without replacement
            for a class with at least ``K`` samples of other classes (numpy's ``choice(replace=False)``),
            with replacement otherwise; ``any`` always with replacement. ``True``: always with
            replacement, which costs ``O(N K)`` per batch instead of ``O(N num_samples)`` (the authors'
            ImageNet loader). ``False``: never (refused if a class has fewer than ``K`` candidates).
    """

    def __init__(self, negatives: int, num_samples: int, train_labels: Optional[Tensor] = None,
                 mode: str = "other_classes", positive: str = "exact", replacement: Optional[bool] = None):
        super().__init__()
        if mode not in NEGATIVE_MODES:
            raise ValueError(f"contrast mode must be one of {NEGATIVE_MODES}, got {mode!r}.")
        if positive not in POSITIVE_MODES:
            raise ValueError(f"contrast positive must be one of {POSITIVE_MODES}, got {positive!r}.")
        if mode == "any" and replacement is False:
            raise ValueError("contrast mode 'any' draws with replacement (the authors' memory does); "
                             "leave replacement unset.")
        self.negatives, self.num_samples, self.mode, self.positive = negatives, num_samples, mode, positive
        if train_labels is None:
            if mode == "other_classes" or positive == "relax":
                raise ValueError(f"contrast mode {mode!r} with positive {positive!r} needs the training set's "
                                 f"labels (train_labels); use mode='any' and positive='exact' for data without them.")
            return
        if len(train_labels) != num_samples:
            raise ValueError(f"train_labels has {len(train_labels)} labels for a training set of {num_samples} "
                             f"samples; pass the labels of the whole training set, in index order.")
        class_sizes = torch.bincount(train_labels)
        pool = num_samples - class_sizes[class_sizes > 0]  # the other classes' samples, per class present
        if mode == "other_classes" and (pool == 0).any():
            raise ValueError("contrast mode 'other_classes' needs at least two classes in the training set; "
                             "use mode='any'.")
        if mode == "other_classes" and replacement is False and (pool < negatives).any():
            raise ValueError(f"{negatives} negatives without replacement need as many samples of other classes, "
                             f"and a class has only {int(pool.min())}; lower the negatives or allow replacement.")
        distinct = num_samples - class_sizes >= negatives if replacement is None else \
            torch.full_like(class_sizes, not replacement, dtype=torch.bool)
        self.any_distinct = mode == "other_classes" and bool(distinct[class_sizes > 0].any())
        self.register_buffer("labels", train_labels.clone(), persistent=False)
        self.register_buffer("order", torch.argsort(train_labels, stable=True), persistent=False)  # grouped by class
        self.register_buffer("class_sizes", class_sizes, persistent=False)
        self.register_buffer("class_starts", class_sizes.cumsum(0) - class_sizes, persistent=False)
        self.register_buffer("distinct", distinct, persistent=False)

    def forward(self, index: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The contrast indices of the samples ``index`` (``(N,)``), drawn with ``generator`` (default:
        torch's global one; on the generator's device, then moved to ``index``'s)."""
        device, n = index.device, index.shape[0]

        def uniform(*shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
            # float64 for indices: a float32 grid (2^24 values) would favour some of 10^6 indices.
            drawn = torch.rand(shape, dtype=dtype, generator=generator,
                               device=generator.device if generator is not None else device)
            return drawn.to(device)

        def draw_below(bound: Tensor, count: int) -> Tensor:  # (n, count) uniform integers in [0, bound)
            return torch.minimum((uniform(n, count) * bound[:, None]).long(), bound[:, None] - 1)

        if self.mode == "other_classes" or self.positive == "relax":
            label = self.labels[index]
            own_size, own_start = self.class_sizes[label], self.class_starts[label]
        if self.positive == "exact":
            positives = index
        else:
            positives = self.order[own_start + draw_below(own_size, 1)[:, 0]]
        if self.mode == "any":
            drawn = draw_below(torch.full((n,), self.num_samples, device=device), self.negatives)
        else:
            # With replacement: a position in the class-sorted order that skips the sample's class.
            position = draw_below(self.num_samples - own_size, self.negatives)
            drawn = self.order[position + own_size[:, None] * (position >= own_start[:, None])]
            if self.any_distinct:  # without: the K largest of random keys, the own class's below all
                keys = uniform(n, self.num_samples, dtype=torch.float32)
                keys = keys.masked_fill(self.labels[None, :] == label[:, None], -1.0)
                distinct = keys.topk(self.negatives, dim=1).indices
                drawn = torch.where(self.distinct[label][:, None], distinct, drawn)
        return torch.cat([positives[:, None], drawn], dim=1)


# ----------------------------------------------------------------------------- ReviewKD
class AttentionFusion(nn.Module):
    """ReviewKD's attention based fusion (ABF).

    A 1x1 conv + BN reduces the student feature to ``mid_channels``; when ``fuse``, the residual from
    the deeper stage is resized to it (nearest) and the two are mixed with per-position weights from
    a 1x1 conv + sigmoid on their concatenation; the result is resized (nearest) to ``out_size`` and
    a 3x3 conv + BN maps it to ``out_channels``. Initialization: the authors' (Kaiming uniform, ``a=1``).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, feature: Tensor, residual: Optional[Tensor] = None,
                out_size: Optional[Sequence[int]] = None) -> tuple[Tensor, Tensor]:
        """Returns ``(output, fused)``: the map compared with the teacher and the residual for the next,
        shallower stage (``mid_channels`` at ``out_size``)."""
        fused = self.reduce(feature)
        if self.attention is not None:
            residual = F.interpolate(residual, size=fused.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([fused, residual], dim=1))
            fused = fused * weights[:, :1] + residual * weights[:, 1:]
        if out_size is not None and tuple(fused.shape[-2:]) != tuple(out_size):
            fused = F.interpolate(fused, size=tuple(out_size), mode="nearest")
        return self.output(fused), fused


class ReviewFusion(nn.Module):
    """ReviewKD's review chain: an :class:`AttentionFusion` per student stage, run from the deepest
    stage (no residual) to the shallowest, each fusing its stage with the deeper stages' residual.

    Args:
        in_channels: the student features' channels, shallow to deep (resnet8x4: its three stages
            and the pooled feature, ``[64, 128, 256, 256]``).
        out_channels: the teacher features' channels they are compared with (resnet32x4: the same).
        mid_channels: the fused width; default the authors' ``min(512, in_channels[-1])``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int], mid_channels: Optional[int] = None):
        super().__init__()
        if len(in_channels) != len(out_channels) or not in_channels:
            raise ValueError(f"ReviewFusion needs one out channel count per student feature, got in_channels "
                             f"{list(in_channels)} and out_channels {list(out_channels)}.")
        mid = min(512, in_channels[-1]) if mid_channels is None else mid_channels
        last = len(in_channels) - 1
        self.fusions = nn.ModuleList(AttentionFusion(c_in, mid, c_out, fuse=i < last)
                                     for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels)))

    def forward(self, features: Sequence[Tensor], out_sizes: Optional[Sequence[Sequence[int]]] = None) -> list[Tensor]:
        """Fuse ``(N, C_i, H_i, W_i)`` student features, shallow to deep (a pooled feature as
        ``(N, C, 1, 1)``), into maps of ``out_channels[i]`` channels at ``out_sizes[i]`` (default: the
        feature's own size), returned in the same order."""
        if len(features) != len(self.fusions) or (out_sizes is not None and len(out_sizes) != len(features)):
            raise ValueError(f"ReviewFusion was built for {len(self.fusions)} student features, got {len(features)} "
                             f"features and {'no' if out_sizes is None else len(out_sizes)} out sizes.")
        outputs: list[Tensor] = [None] * len(features)  # type: ignore[list-item]
        residual = None
        for i in reversed(range(len(features))):
            outputs[i], residual = self.fusions[i](features[i], residual, None if out_sizes is None else out_sizes[i])
        return outputs
