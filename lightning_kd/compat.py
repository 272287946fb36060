"""Where Lightning has no public API for what the library needs: the only module that reads or writes the
trainer's loop progress (``tests/test_architecture.py`` keeps every other module on public names, and
``tests/test_compat.py`` pins each function's behaviour to the installed Lightning, so an upgrade that
moves these counters fails there, not silently in a run). Also torch's compiler internals the captured
step (``lightning_kd.step``) needs, for the same reason.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

#: What torch.compile raises where a ``fullgraph`` function cannot be one graph.
GraphBreak = torch._dynamo.exc.Unsupported


def trace_autograd_in_graphs() -> None:
    """Let torch.compile trace ``torch.autograd.grad`` into the graph (off by default: it breaks the graph)."""
    torch._dynamo.config.trace_autograd_ops = True


def mark_static(tensor: Tensor) -> Tensor:
    """Tell torch.compile that ``tensor`` keeps its memory between calls: CUDA graphs read it in place."""
    torch._dynamo.mark_static_address(tensor)
    return tensor


def count_optimizer_step(trainer: pl.Trainer) -> None:
    """Count one manual-optimization step as Lightning counts an ``optimizer.step()`` of the module's own:
    ``trainer.global_step`` grows by one. Used for a step another process took (a peer-parallel rank counts
    the other peers' steps, so ``global_step`` is the same on every rank and equals a replicated run's)."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def epochs_begun(trainer: pl.Trainer) -> int:
    """The epochs whose batches all trained, as the fit loop counts them when it hands a sampler its epoch
    (``set_epoch``): right after a resume from an epoch-end checkpoint this is one more than
    ``trainer.current_epoch``, which counts the checkpoint's last epoch as done only after its end hooks."""
    return trainer.fit_loop.epoch_progress.current.processed


def step_values_logged(trainer: pl.Trainer) -> bool:
    """Whether the values a training step logs reach anyone: the loggers write this batch's step values (as
    Lightning's logger connector decides, ``should_update_logs``: every ``log_every_n_steps`` batches counted
    by ``_batches_that_stepped``, and every batch of ``fast_dev_run``), or it is the first or last batch of
    the epoch (so ``callback_metrics`` holds the epoch's first and last step values)."""
    loop = trainer.fit_loop.epoch_loop
    every = trainer.log_every_n_steps
    return (bool(trainer.fast_dev_run) or loop.batch_idx <= 0 or trainer.is_last_batch
            or (every > 0 and (loop._batches_that_stepped + 1) % every == 0))
