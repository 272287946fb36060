"""A cache of teacher logits per training sample, for runs where the teacher's input never changes.

Without random augmentation a training image is the same tensor every epoch, so the frozen
teacher (eval mode, no dropout or batch statistics) gives the same logits every epoch: the first
epoch computes them, later epochs read them, and the teacher forward drops out of the step.
With random crops or flips the input differs every epoch and a cache would serve stale logits,
so :func:`check_cacheable` refuses those runs before training.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn


def check_cacheable(datamodule, teacher: nn.Module) -> None:
    """Raise a ValueError naming the fix when cached teacher logits would differ from live ones."""
    fix = "or set model.init_args.cache_teacher_outputs: false"
    if datamodule is None or not getattr(datamodule, "return_index", False):
        raise ValueError("cache_teacher_outputs keys the cache on sample indices: use a datamodule with "
                         f"`return_index: true` (any InMemoryDataModule) passed to the Trainer, {fix}.")
    if getattr(datamodule, "pad", 0) or getattr(datamodule, "flip", False):
        raise ValueError(f"cache_teacher_outputs is valid only without random augmentation, but the data "
                         f"has pad={datamodule.pad}, flip={datamodule.flip}: set data.init_args.pad: 0 "
                         f"and flip: false, {fix}.")
    hooked = [name for name, m in teacher.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise ValueError(f"cache_teacher_outputs caches the teacher's logits only, but this method reads "
                         f"teacher features through hooks on {hooked}; those need the live forward, {fix}.")


class TeacherLogitCache:
    """Teacher logits for ``size`` training samples, filled on first sight of each sample.

    Args:
        size: number of training samples (indices run over ``0 .. size - 1``).
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.logits: Optional[Tensor] = None
        self.filled: Optional[Tensor] = None

    def __call__(self, index: Tensor, x: Tensor, teacher: Callable[[Tensor], Tensor]) -> Tensor:
        """Logits of the samples ``index`` (whose inputs are ``x``), from the cache when all are in it.

        Deciding costs one host-device sync per step (reading ``filled``), small beside the
        teacher forward it saves.
        """
        if self.filled is None:
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=index.device)
        if self.logits is not None and bool(self.filled[index].all()):
            return self.logits[index]
        logits = teacher(x)
        if self.logits is None:
            self.logits = torch.zeros(self.size, *logits.shape[1:], dtype=logits.dtype, device=logits.device)
        self.logits[index] = logits
        self.filled[index] = True
        return logits
