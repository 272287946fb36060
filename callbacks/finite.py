"""FiniteCheck: a NaN or Inf loss, a non-finite validation metric, or a diverged weight stops the run before
it reaches the weights or a file, naming the term (or tensor) and the step and the last good checkpoint on
disk; :func:`check_sound` is the one check of every file of tensors a run writes (checkpoints, RCO anchors)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Collection, Iterator, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from lightning_kd.checkpoints import load_checkpoint_file


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    """A sentence naming the newest checkpoint this run's ModelCheckpoints wrote (those on disk are good:
    a checkpoint with a non-finite loss or tensor is never written)."""
    paths = {Path(p) for c in trainer.checkpoint_callbacks for p in (c.best_model_path, c.last_model_path) if p}
    paths = sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime)
    if not paths:
        return "No checkpoint of this run is on disk yet: start over with a lower learning rate."
    try:
        saved = load_checkpoint_file(paths[-1])
        when = f" (epoch {saved['epoch']}, global step {saved['global_step']})"
    except (ValueError, KeyError, OSError):
        when = ""
    return (f"Nothing was written after it; the last good checkpoint on disk is {str(paths[-1])!r}{when}: "
            f"resume from it (--ckpt_path) with a lower learning rate, or start over.")


#: The largest magnitude a parameter may have in a written file: beyond it the weights diverged (a trained
#: network's stay orders of magnitude below; float32 overflows only at 3.4e38, so a diverging run can write
#: finite 1e30s). BatchNorm statistics and optimizer state (Adam's exp_avg_sq) need only be finite.
MAX_ABS_PARAMETER = 1e6


def floating_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` of every floating tensor in nested dicts, lists and tuples; a checkpoint's
    ``state_dict`` entries by their own names, the rest by their path (``optimizer_states[0].state.3.exp_avg``)."""
    if isinstance(obj, Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            name = "" if key == "state_dict" and not prefix else f"{prefix}.{key}" if prefix else str(key)
            yield from floating_tensors(value, name)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from floating_tensors(value, f"{prefix}[{i}]")


def unsound(tensors: list[tuple[str, Tensor]], parameters: Collection[str] = ()) -> list[str]:
    """The names of the tensors holding NaN/Inf and of the ``parameters`` beyond :data:`MAX_ABS_PARAMETER`,
    with one host-device sync per device."""
    flags: dict[torch.device, list[Tensor]] = defaultdict(list)
    for name, tensor in tensors:
        ok = torch.isfinite(tensor).all()
        if name in parameters and tensor.numel():
            ok = ok & (tensor.detach().abs().amax() <= MAX_ABS_PARAMETER)
        flags[tensor.device].append(ok)
    names = {device: [n for n, t in tensors if t.device == device] for device in flags}
    return [n for device, oks in flags.items() for n, ok in zip(names[device], torch.stack(oks).tolist()) if not ok]


def check_sound(obj: Any, what: str, trainer: Optional[pl.Trainer] = None, parameters: Collection[str] = ()) -> None:
    """Refuse to write ``obj`` (a checkpoint, an anchor's state_dict): ``FloatingPointError`` naming its
    tensors that hold NaN/Inf or, among ``parameters``, a value beyond :data:`MAX_ABS_PARAMETER`, and the
    last good checkpoint of ``trainer``'s run."""
    tensors = list(floating_tensors(obj))
    bad = unsound(tensors, set(parameters))
    if bad:
        at = f" at epoch {trainer.current_epoch}, global step {trainer.global_step}" if trainer is not None else ""
        raise FloatingPointError(
            f"refused to write {what}{at}: {len(bad)} of its {len(tensors)} tensors hold NaN/Inf or a parameter "
            f"beyond ±{MAX_ABS_PARAMETER:g} (e.g. {bad[:3]}): the weights diverged."
            + (f" {last_good_checkpoint(trainer)}" if trainer is not None else ""))


class FiniteCheck(Callback):
    """Checks the loss terms of every training step, and every checkpoint's tensors, for NaN/Inf.

    Reads ``pl_module.loss_terms`` (the unweighted terms and their weighted sum, set by
    :meth:`~lightning_kd.base.StudentModule.weighted_total`) before each backward pass. A failed
    check raises ``FloatingPointError`` naming the first bad term, its step and the last good
    checkpoint on disk. The check costs a host-device sync, so ``every_n_steps=None`` means every
    step on CPU (before the backward pass, so a NaN never reaches the weights) and every 100 steps on
    an accelerator; the terms of the steps in between stay on the device, and pending ones are always
    checked at the end of each training epoch and before a checkpoint is written. Finite losses can
    still end in diverged weights; so before a checkpoint is written every floating tensor of the
    network and optimizer (parameters, BatchNorm statistics, Adam's ``exp_avg_sq``) is checked by
    :func:`check_sound`, with one host-device sync: a non-finite tensor, or a parameter beyond
    :data:`MAX_ABS_PARAMETER`, stops the run instead of reaching the disk (so ``last.ckpt`` stays the
    last good one). A non-finite validation metric (``val/loss`` inf) of a fit stops it too, before
    that validation's checkpoints are written. Every method adds this callback through
    ``configure_callbacks``. Under ``capture_step`` the terms come out of the compiled step, whose SGD update
    is in the same graph: a NaN is caught after that step's update, and still before any checkpoint.

    Args:
        every_n_steps: check the loss terms every this many steps (None: every step on CPU, every 100 on GPU).
    """

    def __init__(self, every_n_steps: Optional[int] = None):
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ValueError(f"check_finite_every_n_steps must be an integer >= 1 or None (every step on "
                             f"CPU, every 100 on GPU), got {every_n_steps!r}.")
        self.every_n_steps = every_n_steps
        self.pending: list[tuple[int, int, list[str], Tensor]] = []  # (epoch, step, names, values)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        terms = getattr(pl_module, "loss_terms", None) or {"loss": loss.detach()}  # the module's are detached
        values = torch.stack([v.float() if v.dim() == 0 else v.float().reshape(()) for v in terms.values()])
        self.pending.append((trainer.current_epoch, trainer.global_step, list(terms), values))
        every = self.every_n_steps or (1 if pl_module.device.type == "cpu" else 100)
        if len(self.pending) >= every:
            self.raise_if_not_finite(trainer)

    def raise_if_not_finite(self, trainer: pl.Trainer) -> None:
        """One sync for all pending steps; ``FloatingPointError`` naming the first non-finite term."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        values = pending[0][-1] if len(pending) == 1 else torch.cat([values for *_, values in pending])
        if bool(values.isfinite().all()):
            return
        for epoch, step, names, values in pending:
            bad = (~values.isfinite()).nonzero()
            if len(bad):
                raise FloatingPointError(
                    f"train/{names[int(bad[0])]} is {float(values[bad[0]])} at epoch {epoch}, global step "
                    f"{step}; training stopped. {last_good_checkpoint(trainer)} Check the inputs and loss "
                    f"weights too.")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raise_if_not_finite(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the ModelCheckpoints (Lightning runs them last): a diverged run writes nothing more.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.raise_if_not_finite(trainer)  # a pending NaN loss term is the cause: named first
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/") and isinstance(v, Tensor)}
        bad = [k for k, v in metrics.items() if not bool(torch.isfinite(v).all())]
        if bad:
            raise FloatingPointError(
                f"{bad[0]} is {float(metrics[bad[0]])} at epoch {trainer.current_epoch}, global step "
                f"{trainer.global_step}: the run diverged; training stopped. {last_good_checkpoint(trainer)}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Raised before the file is written: the checkpoints on disk stay as they are. Every tensor of it
        # (weights, BatchNorm statistics, optimizer state, callbacks' state) is checked.
        self.raise_if_not_finite(trainer)
        trained = {k: checkpoint[k] for k in ("state_dict", "optimizer_states") if k in checkpoint}  # not the
        check_sound(trained, "a checkpoint", trainer,  # callbacks' bookkeeping (a ModelCheckpoint's inf bound)
                    [name for name, _ in pl_module.named_parameters()])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.pending.clear()
