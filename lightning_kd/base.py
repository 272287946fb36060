"""DistillationModule: the one base class. A frozen teacher, a trainable student, and the wiring.

A method subclasses it and writes ``distill_losses(batch) -> (student_logits, {name: loss})``;
the base class weighs and sums the terms, logs each as ``train/<name>``, evaluates the student
(and the teacher) with torchmetrics, and builds the optimizer over trainable parameters only.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_kd.checkpoints import SafeCheckpointIO, load_checkpoint_file, load_network_weights
from lightning_kd.models import build_network
from lightning_kd.teacher_cache import TeacherLogitCache, check_cacheable

NetSpec = Union[str, dict[str, Any]]

# The frozen teacher is in eval mode on purpose; Lightning warns about any such module.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")


def collect_rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python generator states, as tensors and plain types."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class DistillationModule(pl.LightningModule):
    """Base class of every method: frozen teacher + trainable student.

    Args:
        student: the network to train: a name from ``lightning_kd.models.MODELS``, a dotted path
            to any constructor (``torchvision.models.resnet18``), or ``{"name": ..., **kwargs}``.
        teacher: the teacher network, same forms as ``student``.
        teacher_ckpt: the teacher's weights: a Lightning ``.ckpt`` of a ``Supervised`` run or a
            plain state_dict file. Loaded with ``weights_only=True``.
        num_classes: number of classes; linked from the datamodule by the CLI.
        input_shape: ``(C, H, W)`` of one input; linked from the datamodule by the CLI.
        optimizer: optimizer factory over the trainable parameters (default SGD lr 0.05,
            momentum 0.9, weight decay 5e-4, the CIFAR KD recipe).
        lr_scheduler: optional LR scheduler factory, stepped once per epoch.
        channels_last: keep the networks and the input batches in channels_last memory format
            (faster convolutions on GPUs with tensor cores).
        compile: ``torch.compile`` the student and the teacher (in place, so checkpoint keys and
            the forward hooks of feature methods stay as they are). Opt-in: compiling takes tens of
            seconds, which short runs do not win back.
        cache_teacher_outputs: compute the teacher's logits once per training sample and reuse
            them in later epochs. Valid only without random augmentation (data ``pad: 0``,
            ``flip: false``, ``return_index: true``) and for methods that read only the teacher's
            logits; anything else is refused before training.
        check_finite_every_n_steps: how often the loss terms are checked for NaN/Inf (a failed
            check raises ``FloatingPointError`` naming the first bad term and its step). The
            check costs a host-device sync, so ``None`` means every step on CPU (before the
            optimizer step, so a NaN never reaches the weights) and every 100 steps on an
            accelerator; the terms of the steps in between stay on the device, and pending ones
            are always checked at the end of each epoch and before a checkpoint is written, so
            no checkpoint is ever saved after a non-finite loss.

    Speed: under ``precision: bf16-mixed`` the frozen teacher's weights are cast to bfloat16 for
    the fit (it runs without autograd in eval mode, so nothing is lost in training) and restored to
    their original values afterwards. Checkpoints never carry the teacher, in either dtype.
    """

    #: Whether the method needs ``teacher`` and ``teacher_ckpt`` (False for Supervised and DML).
    uses_teacher: bool = True

    def __init__(
        self,
        student: NetSpec,
        teacher: Optional[NetSpec] = None,
        teacher_ckpt: Optional[str] = None,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        optimizer: Optional[OptimizerCallable] = None,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        channels_last: bool = False,
        compile: bool = False,
        cache_teacher_outputs: bool = False,
        check_finite_every_n_steps: Optional[int] = None,
    ):
        super().__init__()
        if check_finite_every_n_steps is not None and not (
                isinstance(check_finite_every_n_steps, int) and check_finite_every_n_steps >= 1):
            raise ValueError(f"check_finite_every_n_steps must be an integer >= 1 or None (every step on "
                             f"CPU, every 100 on GPU), got {check_finite_every_n_steps!r}.")
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self._finite_flags: list[tuple[int, int, list[str], Tensor]] = []  # (epoch, step, names, values)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.channels_last, self.compile_networks = channels_last, compile
        self.cache_teacher_outputs = cache_teacher_outputs
        self.teacher_cache: Optional[TeacherLogitCache] = None
        self._batch_index: Optional[Tensor] = None  # sample indices of the training batch (cache key)
        self._teacher_weights: Optional[dict[str, Tensor]] = None  # originals while cast to bf16
        self.loss_weights: dict[str, float] = {}
        self.student = build_network(student, self.num_classes, self.input_shape[0])
        self.teacher: Optional[nn.Module] = None
        name = type(self).__name__
        if self.uses_teacher:
            if teacher is None or not teacher_ckpt:
                raise ValueError(f"{name} distills from a teacher: set both `teacher` (the network spec) "
                                 f"and `teacher_ckpt` (its trained weights, e.g. best.ckpt of a "
                                 f"Supervised run).")
            self.teacher = build_network(teacher, self.num_classes, self.input_shape[0])
            load_network_weights(self.teacher, teacher_ckpt, what="teacher_ckpt")
            self.teacher.requires_grad_(False).eval()
        elif teacher is not None or teacher_ckpt:
            raise ValueError(f"{name} trains without a teacher: remove `teacher` and `teacher_ckpt`.")
        if cache_teacher_outputs and not self.uses_teacher:
            raise ValueError(f"{name} has no teacher, so there is nothing to cache: remove "
                             f"`cache_teacher_outputs`.")
        top5 = min(5, self.num_classes)
        self.val_acc = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(self.num_classes, top_k=top5, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(self.num_classes, top_k=top5, average="micro")
        if self.teacher is not None:
            self.teacher_acc = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
            self.agreement = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")

    # ----------------------------------------------------------------- what a method writes
    def distill_losses(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(student_logits, {loss_name: unweighted scalar loss})`` for one batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement distill_losses(batch)")

    # ----------------------------------------------------------------- helpers for methods
    def example_input(self, batch_size: int = 2) -> Tensor:
        """A zero batch of the data's input shape, to size adapters in ``__init__``."""
        return torch.zeros(batch_size, *self.input_shape)

    @torch.no_grad()
    def example_features(self, net: nn.Module, hooks) -> list[Tensor]:
        """Features ``hooks`` record on one ``example_input()`` pass of ``net``, to size adapters.

        Runs in eval mode (restored afterwards), so BatchNorm running statistics are untouched.
        """
        was_training = net.training
        net.eval()
        try:
            net(self.example_input())
            return hooks.features
        finally:
            net.train(was_training)
            hooks.clear()

    @torch.no_grad()
    def teacher_forward(self, x: Tensor) -> Tensor:
        """Teacher logits without autograd (its hooks, if any, record features too).

        With ``cache_teacher_outputs``, training batches read the logits cached per sample.
        """
        if self.teacher_cache is not None and self.training and self._batch_index is not None:
            return self.teacher_cache(self._batch_index, x, self.teacher)
        return self.teacher(x)

    def prepare_batch(self, batch) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of a batch: drops a sample-index column (kept for the teacher cache) and
        converts ``x`` to channels_last when asked."""
        x, y, *index = batch
        self._batch_index = index[0] if index else None
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    # ----------------------------------------------------------------- speed options
    def setup(self, stage: str) -> None:
        self.check_data_fits()
        # Resuming from ckpt_path goes through weights_only loading (setup runs before the restore).
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = SafeCheckpointIO()
        # Before the strategy moves the module to the device, so formats and dtypes travel along.
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if stage != "fit":
            return
        if self.teacher is not None and str(self.trainer.precision) == "bf16-mixed":
            self._teacher_weights = {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}
            self.teacher.to(torch.bfloat16)
        if self.cache_teacher_outputs:
            datamodule = self.trainer.datamodule
            check_cacheable(datamodule, self.teacher)
            self.teacher_cache = TeacherLogitCache(len(datamodule.train_dataloader().dataset))
        if self.compile_networks:
            self.student.compile()
            if self.teacher is not None:
                self.teacher.compile()

    def teardown(self, stage: str) -> None:
        if self._teacher_weights is not None:  # back to the exact original weights and dtype
            self.teacher.to(torch.float32).load_state_dict(self._teacher_weights)
            self._teacher_weights = None
        self.teacher_cache = None
        self._finite_flags.clear()

    def check_data_fits(self) -> None:
        """Raise if the datamodule's classes or input shape differ from the model's."""
        data = self.trainer.datamodule
        for attr in ("num_classes", "input_shape"):
            want, got = getattr(self, attr), getattr(data, attr, None)
            if got is not None and tuple(np.atleast_1d(got)) != tuple(np.atleast_1d(want)):
                raise ValueError(f"the model was built for {attr}={want}, but {type(data).__name__} has "
                                 f"{attr}={got}: build the model with the datamodule's value (the CLI "
                                 f"links it for you).")

    # ----------------------------------------------------------------- non-finite losses
    def check_finite(self, losses: dict[str, Tensor]) -> None:
        """Record the loss terms; raise on the first NaN/Inf one when a check is due.

        Called by ``training_step`` before the backward pass. The values stay on the device until
        ``check_finite_every_n_steps`` steps are pending (see :meth:`raise_if_not_finite`).
        """
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        self._finite_flags.append((self.current_epoch, self.global_step, list(losses), values))
        every = self.check_finite_every_n_steps or (1 if self.device.type == "cpu" else 100)
        if len(self._finite_flags) >= every:
            self.raise_if_not_finite()

    def raise_if_not_finite(self) -> None:
        """One sync for all pending steps; ``FloatingPointError`` naming the first non-finite term."""
        flags, self._finite_flags = self._finite_flags, []
        if not flags or bool(torch.cat([values for *_, values in flags]).isfinite().all()):
            return
        for epoch, step, names, values in flags:
            bad = (~values.isfinite()).nonzero()
            if len(bad):
                raise FloatingPointError(
                    f"train/{names[int(bad[0])]} is {float(values[bad[0]])} at epoch {epoch}, global step "
                    f"{step}; training stopped before it could reach a checkpoint. Lower the learning "
                    f"rate, check the inputs and loss weights, or resume from the last checkpoint.")

    def on_train_epoch_end(self) -> None:
        self.raise_if_not_finite()

    def load_teacher_state(self, state: dict[str, Tensor]) -> None:
        """Swap the frozen teacher's weights during a fit (RCO's route anchors, callbacks/route.py).

        The values are copied into the teacher's current dtype and device (bfloat16 under the bf16
        speed option), become the weights that ``teardown`` restores, and void cached logits.
        """
        self.teacher.load_state_dict(state)
        if self._teacher_weights is not None:
            self._teacher_weights = {k: v.detach().clone() for k, v in state.items()}
        if self.teacher_cache is not None:
            self.teacher_cache = TeacherLogitCache(self.teacher_cache.size)

    # ----------------------------------------------------------------- Lightning wiring
    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def train(self, mode: bool = True):
        # Lightning flips the whole module to train() after validation; the teacher stays in eval.
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def training_step(self, batch, batch_idx):
        batch = self.prepare_batch(batch)
        _, losses = self.distill_losses(batch)
        return self.weighted_total(losses, batch[0].shape[0])

    def weighted_total(self, losses: dict[str, Tensor], batch_size: int, prefix: str = "") -> Tensor:
        """Check the terms for NaN/Inf, log each as ``train/<prefix><name>``, and return their sum
        weighted by ``loss_weights`` (logged as ``train/<prefix>loss``)."""
        self.check_finite({prefix + name: value for name, value in losses.items()})
        total = sum(self.loss_weights.get(name, 1.0) * value for name, value in losses.items())
        logged = {f"train/{prefix}{name}": value.detach() for name, value in losses.items()}
        logged[f"train/{prefix}loss"] = total.detach()
        self.log_dict(logged, on_step=True, on_epoch=False, batch_size=batch_size)
        return total

    def validation_step(self, batch, batch_idx):
        x, y = self.prepare_batch(batch)
        logits = self(x)
        self.val_acc.update(logits, y)
        self.val_acc5.update(logits, y)
        self.log("val/loss", F.cross_entropy(logits.float(), y), batch_size=x.shape[0], sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/acc5", self.val_acc5)
        if self.teacher is not None:
            t_logits = self.teacher_forward(x)
            self.teacher_acc.update(t_logits, y)
            self.agreement.update(logits, t_logits.argmax(1))
            self.log("teacher/acc", self.teacher_acc)
            self.log("val/agreement", self.agreement)

    def test_step(self, batch, batch_idx):
        x, y = self.prepare_batch(batch)
        logits = self(x)
        self.test_acc.update(logits, y)
        self.test_acc5.update(logits, y)
        self.log("test/acc", self.test_acc)
        self.log("test/acc5", self.test_acc5)

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def make_optimizer(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Optional[dict]]:
        """The configured optimizer over ``params`` (default SGD lr 0.05, momentum 0.9, weight
        decay 5e-4) and its per-epoch LR scheduler config (None without ``lr_scheduler``)."""
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        else:
            optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer, None
        return optimizer, {"scheduler": self.lr_scheduler_factory(optimizer), "interval": "epoch"}

    def configure_optimizers(self):
        optimizer, scheduler = self.make_optimizer(self.trainable_parameters())
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    # The teacher's weights come from teacher_ckpt, so checkpoints do not carry a copy of them.
    # The random generators travel with the checkpoint, so a resumed run draws the same
    # shuffles and augmentations as an uninterrupted one.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_not_finite()  # never write weights that a non-finite loss has touched
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("teacher.")}
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.teacher is not None:
            state = checkpoint["state_dict"]
            for k, v in self.teacher.state_dict().items():
                state.setdefault(f"teacher.{k}", v)
        if self._trainer is not None and "rng_states" in checkpoint:  # resuming a fit
            restore_rng_states(checkpoint["rng_states"])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint`` after a ``weights_only`` read of a local file, so a
        checkpoint that would run code is refused whatever torch's default."""
        if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            load_checkpoint_file(checkpoint_path, what="checkpoint")
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def export_student(self, path: str) -> None:
        """Save the student as a plain state_dict that loads into its architecture."""
        torch.save(self.student.state_dict(), path)
