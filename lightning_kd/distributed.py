"""The collectives methods share: a gather that keeps gradients (relations over the global batch) and an
in-place average over a group of processes (mutual-learning peers outside DDP's reducer).

Both are no-ops on a single process, so a method calls them unconditionally.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather_with_grads(module: pl.LightningModule, tensor: Tensor) -> Tensor:
    """``tensor`` of every process, concatenated in rank order along dim 0; gradients flow back to each
    process's own rows (the backward of the gather sums the gradients of all processes)."""
    if not distributed() or module.trainer.world_size == 1:
        return tensor
    return module.all_gather(tensor, sync_grads=True).flatten(0, 1)


def gather(module: pl.LightningModule, tensor: Tensor) -> Tensor:
    """``tensor`` of every process, detached, concatenated in rank order along dim 0 (this process's own
    rows are those of :func:`own_rows`)."""
    if not distributed() or module.trainer.world_size == 1:
        return tensor.detach()
    return module.all_gather(tensor.detach()).flatten(0, 1)


def own_rows(module: pl.LightningModule, gathered: Tensor, rows: int) -> Tensor:
    """This process's ``rows`` rows of a :func:`gather` of equal-sized parts."""
    if not distributed() or module.trainer.world_size == 1:
        return gathered
    start = module.trainer.global_rank * rows
    return gathered[start:start + rows]


def average_across_ranks(tensors: Sequence[Tensor], group: Optional[dist.ProcessGroup] = None) -> None:
    """In place, replace each tensor by its mean over the processes of ``group`` (default: all of them),
    with one flat all-reduce.

    A no-op outside ``torch.distributed`` or with a single process. Every rank of the group must pass
    tensors of the same shapes in the same order.
    """
    if not tensors or not distributed() or dist.get_world_size(group) < 2:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    with torch.no_grad():
        for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(chunk.view_as(t))
