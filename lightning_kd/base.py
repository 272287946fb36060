"""The two base classes: :class:`StudentModule` (a network trained on labels) and :class:`DistillationModule`
(a student plus a :class:`~lightning_kd.teacher.FrozenTeacher`). A step runs in one direction: teacher
forward, student forward, then the method's ``distill_losses(student, teacher, batch) -> {name: loss}``
(``batch`` a :class:`~lightning_kd.batch.Batch`: ``x``, ``y``, ``index``), weighed by ``loss_weights`` and
summed here. A method declares the layers it reads and what it needs of the data (``data_needs``) and never
runs a forward or touches a hook itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_kd.batch import Batch, check_data_needs
from lightning_kd.callbacks import FiniteCheck, guarantees
from lightning_kd.checkpoints import WeightsMismatchError, load_checkpoint_file, save_repdistiller
from lightning_kd.compat import step_values_logged
from lightning_kd.export import export, preprocessing
from lightning_kd.features import FeatureHooks, NetOutput, example_features
from lightning_kd.models import build_network, is_pretrained
from lightning_kd.resume import TEACHER_FILES, check_loaded_resume, check_teacher_files
from lightning_kd.schedules import check_schedule, fit_to_run, warmup_scale
from lightning_kd.step import CapturedStep, refusal
from lightning_kd.teacher import FrozenTeacher
from lightning_kd.trust import check_class_paths, named_by_user, reading

NetSpec = Union[str, dict[str, Any]]
DEFAULT_SHAPE = {"num_classes": 10, "input_shape": (3, 32, 32)}  # what a module given neither is built for


def accuracy(num_classes: int, top_k: int = 1) -> MulticlassAccuracy:
    return MulticlassAccuracy(num_classes, top_k=min(top_k, num_classes), average="micro")


def attached_trainer(module: pl.LightningModule) -> Optional[pl.Trainer]:
    """The module's Trainer, or None outside a fit (unit tests call methods on a bare module)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


class StudentModule(pl.LightningModule):
    """A network trained on labels: the student, its metrics, optimizer, schedule and export. On its own
    it trains with cross-entropy; subclasses change :meth:`student_losses` and ``loss_weights``.

    Args:
        student: the network: a name from ``lightning_kd.models.MODELS``, a dotted path to any
            constructor (``torchvision.models.resnet18``), or ``{"name": ..., **kwargs}``.
        num_classes, input_shape: classes and ``(C, H, W)`` of the data: pass the datamodule's
            (``num_classes=dm.num_classes, input_shape=dm.input_shape``; the CLI links them from it). Not
            given, the networks are built for 10 classes of (3, 32, 32) images, and data of another shape
            is refused when the fit starts, naming them.
        optimizer: optimizer factory over the trainable parameters (default SGD lr 0.05, momentum
            0.9, weight decay 5e-4, the CIFAR KD recipe).
        lr_scheduler: LR scheduler factory, stepped once per epoch; those of :mod:`lightning_kd.schedules`
            are told the run's length (``trainer.max_epochs``).
        channels_last: networks and input batches in channels_last memory format (faster on GPUs).
        compile: ``torch.compile`` the networks in place (keys and hooks unchanged); opt-in, as
            compiling takes tens of seconds.
        check_finite_every_n_steps: see :class:`~lightning_kd.callbacks.FiniteCheck`.
        log_every_step: log the step values (``train/<term>``, ``train/loss``, ...) at every training step;
            by default only on the steps the loggers write (``trainer.log_every_n_steps``) and on the first
            and last batch of each epoch, since each logged value costs Lightning about 2,000 Python calls.
        capture_step: compile the whole training step (teacher and student forwards, losses, backward and
            the SGD update) as one graph with ``torch.compile``, with CUDA graphs on a GPU: the step's host
            work is gone (:mod:`lightning_kd.step`). One SGD optimizer, one device, no gradient accumulation
            or clipping; what it cannot capture is refused when training starts, naming the fix.

    A method declares in ``data_needs`` what it needs of the training data (``index``, ``train_size``,
    ``train_labels``: :mod:`lightning_kd.batch`); data that cannot give it is refused before training.
    Modules it adds beside the student (heads, adapters) train with it and are exported only when asked
    (:meth:`export_student`).
    """

    #: What the method needs of the training data (see :data:`lightning_kd.batch.DATA_NEEDS`).
    data_needs: tuple[str, ...] = ()
    #: By need, the method's own way to do without it, shown when the data cannot give it.
    data_hints: dict[str, str] = {}

    def __init__(self, student: NetSpec, num_classes: Optional[int] = None,
                 input_shape: Optional[tuple[int, int, int]] = None,
                 optimizer: Optional[OptimizerCallable] = None, lr_scheduler: Optional[LRSchedulerCallable] = None,
                 channels_last: bool = False, compile: bool = False,
                 check_finite_every_n_steps: Optional[int] = None, log_every_step: bool = False,
                 capture_step: bool = False):
        super().__init__()
        self.finite_check = FiniteCheck(check_finite_every_n_steps)  # checks the interval now
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        #: num_classes / input_shape left out (built for DEFAULT_SHAPE): named in the errors of data that differs.
        self.not_given = [k for k, v in (("num_classes", num_classes), ("input_shape", input_shape)) if v is None]
        self.num_classes = int(DEFAULT_SHAPE["num_classes"] if num_classes is None else num_classes)
        self.input_shape = tuple(int(v) for v in (DEFAULT_SHAPE["input_shape"] if input_shape is None else input_shape))
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.channels_last, self.compile_networks = channels_last, compile
        self.student_spec = student
        self.log_every_step = log_every_step
        self.capture_step = capture_step
        #: The compiled whole step (lightning_kd.step) while a fit with capture_step trains; None otherwise.
        self.captured_step: Optional[CapturedStep] = None
        self.warmup_key: Optional[tuple] = None  # (epoch, max_epochs, device) of warmup_tensors
        self.warmup_tensors: dict[str, Tensor] = {}
        self.student = build_network(student, self.num_classes, self.input_shape[0])
        #: The datamodule's normalization, image size, channels and class names (lightning_kd.export),
        #: recorded at setup and kept in checkpoints, for the export.
        self.preprocessing: Optional[dict[str, Any]] = None
        self.student_hooks: Optional[FeatureHooks] = None
        self.loss_weights: dict[str, float] = {"ce": 1.0}
        #: Term-weight schedules: ``{term: fraction}`` ramps the term's weight linearly over that fraction of
        #: the run (:func:`~lightning_kd.schedules.warmup_scale`), logged as ``train/scale/<term>``.
        self.weight_warmup: dict[str, float] = {}
        #: The unweighted terms of the latest training step and their weighted sum, detached.
        self.loss_terms: dict[str, Tensor] = {}
        self.val_acc, self.val_acc5 = accuracy(self.num_classes), accuracy(self.num_classes, 5)
        self.test_acc, self.test_acc5 = accuracy(self.num_classes), accuracy(self.num_classes, 5)

    def student_losses(self, student: NetOutput, batch: Batch) -> dict[str, Tensor]:
        """Unweighted loss terms of one batch: here the cross-entropy with the labels."""
        return {"ce": F.cross_entropy(student.logits, batch.y)}

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A zero batch of the data's input shape, to size adapters in ``__init__``."""
        return torch.zeros(batch_size, *self.input_shape)

    def watch_student(self, layers: Sequence[str]) -> dict[str, Tensor]:
        """Make :meth:`student_forward` return the features of ``layers``; returns them for one
        :meth:`example_input` (eval mode, so BatchNorm statistics stay as they are)."""
        self.student_hooks = FeatureHooks(self.student, layers)
        return example_features(self.student, self.student_hooks, self.example_input())

    def student_forward(self, x: Tensor) -> NetOutput:
        logits = self.student(x)
        return NetOutput(logits, {} if self.student_hooks is None else self.student_hooks.pop())

    def unpack(self, batch) -> Batch:
        """``Batch(x, y, sample indices or None)``; ``x`` in the dtype of a "true" precision (``bf16-true``,
        ``64-true``: Lightning converts the batch before the transfer, while it is still uint8, and the
        datamodules normalize to float32 after it) and in channels_last when asked."""
        x, y, *index = batch
        trainer = attached_trainer(self)
        if trainer is not None:
            x = trainer.precision_plugin.convert_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, index[0] if index else None)

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def training_step(self, batch, batch_idx):
        batch = self.unpack(batch)
        if self.captured_step is not None:  # forward, backward and the SGD step in one compiled call
            return self.captured_step(batch)
        losses, scales = self.step_losses(batch)
        return self.weighted_total(losses, len(batch.x), scales=scales)

    def step_losses(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The unweighted loss terms of one training batch and the factors that scale some of them (none here)."""
        return self.student_losses(self.student_forward(batch.x), batch), {}

    def weighted_total(self, losses: dict[str, Tensor], batch_size: int, prefix: str = "",
                       scales: Optional[dict[str, Tensor]] = None) -> Tensor:
        """The terms' sum weighted by ``loss_weights``, times ``scales`` (where given) and the warm-up of
        ``weight_warmup``; each term is logged unscaled as ``train/<prefix><name>``, each factor as
        ``train/scale/<prefix><name>`` and the sum as ``train/<prefix>loss``. A term without a weight
        is an error."""
        total, terms, factors = self.total_of(losses, prefix, scales, self.warmup_factors())
        self.record_step(terms, factors, batch_size)
        return total

    def total_of(self, losses: dict[str, Tensor], prefix: str, scales: Optional[dict[str, Tensor]],
                 warmup: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The weighted sum of :meth:`weighted_total`, with no logging and no host work (the captured step
        runs it in its graph): ``(total, {prefix+term and prefix+"loss": detached value}, {prefix+term: factor})``."""
        unweighted = sorted(set(losses) - set(self.loss_weights))
        if unweighted:
            raise KeyError(f"{type(self).__name__} returned the loss terms {unweighted} without a weight in "
                           f"loss_weights {self.loss_weights}: give every term a weight.")
        scales = dict(scales or {})
        for name, factor in warmup.items():
            if name in losses:
                scales[name] = scales[name] * factor if name in scales else factor
        total = sum(self.loss_weights[name] * scales.get(name, 1.0) * value for name, value in losses.items())
        terms = {f"{prefix}{name}": value.detach() for name, value in losses.items()}
        terms[f"{prefix}loss"] = total.detach()
        return total, terms, {f"{prefix}{name}": scale for name, scale in scales.items()}

    def record_step(self, terms: dict[str, Tensor], factors: dict[str, Tensor], batch_size: int) -> None:
        """Keep a step's detached terms for the finite check (``loss_terms``) and log them and their factors."""
        if factors:
            self.log_step({f"train/scale/{name}": factor for name, factor in factors.items()}, 1)
        self.loss_terms = terms
        self.log_step({f"train/{name}": value for name, value in terms.items()}, batch_size)

    def warmup_factors(self) -> dict[str, Tensor]:
        """The factors of ``weight_warmup`` this epoch, by term: tensors on the module's device, made once an
        epoch (a Python number in the step would cost a host-device copy every step on a GPU)."""
        if not self.weight_warmup:
            return {}
        key = (self.current_epoch, self.trainer.max_epochs, self.device)
        if self.warmup_key != key:
            self.warmup_key = key
            self.warmup_tensors = {name: torch.tensor(warmup_scale(fraction, *key[:2]), device=self.device)
                                   for name, fraction in self.weight_warmup.items()}
        return self.warmup_tensors

    def logs_step_values(self) -> bool:
        """Whether this training step's values are logged (see ``log_every_step``); always outside a fit."""
        trainer = attached_trainer(self)
        return self.log_every_step or trainer is None or not trainer.training or step_values_logged(trainer)

    def log_step(self, values: dict[str, Any], batch_size: int) -> None:
        """Log a training step's ``values`` (tensors, not Python numbers: those cost a host-device copy) on
        the steps :meth:`logs_step_values` says."""
        if self.logs_step_values():
            self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_train_start(self) -> None:
        if self.capture_step:  # after the optimizer state of a resumed run is loaded
            reason = refusal(self, self.trainer)
            if reason is not None:
                raise ValueError(f"capture_step: {reason}")
            self.captured_step = CapturedStep(self, self.trainer.optimizers[0])

    def on_train_end(self) -> None:
        self.captured_step = None

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        if self.captured_step is None:  # the captured step ran its backward pass in its graph
            super().backward(loss, *args, **kwargs)

    def configure_callbacks(self):
        return guarantees(self.finite_check)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def make_optimizer(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Optional[dict]]:
        """The configured optimizer over ``params`` and its per-epoch LR scheduler config (or None)."""
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
        else:
            optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer, None
        trainer = attached_trainer(self)
        epochs = trainer.max_epochs if trainer is not None else None
        check_schedule(self.lr_scheduler_factory, optimizer, epochs)
        return optimizer, {"scheduler": fit_to_run(self.lr_scheduler_factory(optimizer), epochs), "interval": "epoch"}

    def configure_optimizers(self):
        optimizer, scheduler = self.make_optimizer(self.trainable_parameters())
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}

    def setup(self, stage: str) -> None:
        self.check_data_fits()
        self.preprocessing = preprocessing(self.trainer.datamodule) or self.preprocessing
        if stage == "fit":
            check_data_needs(type(self).__name__, self.data_needs, self.trainer.datamodule, self.data_hints)
        if stage == "fit" and (any(w < 0 for w in self.loss_weights.values()) or not any(self.loss_weights.values())):
            raise ValueError(f"{type(self).__name__}'s loss weights must be >= 0 and not all 0, got "
                             f"{self.loss_weights}: a negative weight trains against its term, all zeros train nothing.")
        if stage == "fit" and set(self.weight_warmup) - set(self.loss_weights):
            raise ValueError(f"{type(self).__name__}'s weight warm-up {self.weight_warmup} names terms without a "
                             f"weight in loss_weights {self.loss_weights}: warm up only weighted terms.")
        if stage == "fit" and any(self.weight_warmup.values()) and not (self.trainer.max_epochs or 0) >= 1:
            raise ValueError(f"{type(self).__name__}'s weight warm-up {self.weight_warmup} is a fraction of the run: "
                             f"set trainer.max_epochs.")
        if self.channels_last:  # before the strategy moves the module, so the format travels along
            self.to(memory_format=torch.channels_last)
        if stage == "fit" and self.compile_networks:
            # Dynamo does not guard on module hooks: code compiled by an earlier fit in this process
            # (another method's watched layers) would be reused and this fit's hooks never run.
            torch.compiler.reset()
            self.student.compile()

    def check_data_fits(self) -> None:
        data = self.trainer.datamodule
        for attr in ("num_classes", "input_shape"):
            want, got = getattr(self, attr), getattr(data, attr, None)
            if got is not None and (tuple(got) if attr == "input_shape" else got) != want:
                raise ValueError(f"the model was built for {attr}={want}{self.default_note()}, but "
                                 f"{type(data).__name__} has {attr}={got}: build the model with the datamodule's "
                                 f"value ({type(self).__name__}(..., num_classes=data.num_classes, input_shape="
                                 f"data.input_shape); the CLI links them for you).")

    def default_note(self) -> str:
        """' (the default: num_classes and input_shape were not given)' where they were left out."""
        return f" (the default: {' and '.join(self.not_given)} not given)" if self.not_given else ""

    def evaluation_outputs(self, x: Tensor) -> tuple[NetOutput, Optional[NetOutput]]:
        """The student's output of an evaluation batch (and the teacher's, in DistillationModule)."""
        return self.student_forward(x), None

    def evaluate(self, batch, stage: str) -> tuple[NetOutput, Optional[NetOutput], Tensor]:
        """Student top-1/top-5 of a validation or test batch; returns both outputs and the labels."""
        x, y, _ = self.unpack(batch)
        student, teacher = self.evaluation_outputs(x)
        top1, top5 = (self.val_acc, self.val_acc5) if stage == "val" else (self.test_acc, self.test_acc5)
        top1.update(student.logits, y)
        top5.update(student.logits, y)
        self.log(f"{stage}/acc", top1, prog_bar=stage == "val")
        self.log(f"{stage}/acc5", top5)
        if stage == "val":
            self.log("val/loss", F.cross_entropy(student.logits.float(), y), batch_size=len(y), sync_dist=True)
        return student, teacher, y

    def validation_step(self, batch, batch_idx):
        self.evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.preprocessing is not None:
            checkpoint["preprocessing"] = self.preprocessing

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.preprocessing = checkpoint.get("preprocessing", self.preprocessing)
        trainer = attached_trainer(self)
        if trainer is not None and trainer.state.fn == "fit":  # a resume continues its run (lightning_kd.resume)
            check_loaded_resume(checkpoint, self, trainer.ckpt_path)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint`` with ``weights_only=True``, after our read of a local
        file for a clear error on a missing, empty, truncated or unsafe one. What the file names is built
        from trusted names only (:mod:`lightning_kd.trust`); ``kwargs`` (e.g. ``student=...``) replace
        the file's and count as named by you."""
        where = f"checkpoint {str(checkpoint_path)!r}"
        if isinstance(checkpoint_path, (str, Path)) and "://" not in str(checkpoint_path):
            check_class_paths(load_checkpoint_file(checkpoint_path, what="checkpoint"), where, cls, kwargs, kwargs)
        with named_by_user(kwargs), reading(where):
            return super().load_from_checkpoint(checkpoint_path, *args, **{"weights_only": True, **kwargs})

    def adapters(self) -> dict[str, nn.Module]:
        """The trainable modules the method adds beside the student (FitNet's regressor, CRD's heads,
        ReviewKD's fusion), by attribute name: optimized with the student, exported only when asked."""
        return {name: module for name, module in self.named_children() if name not in ("student", "teacher")
                and any(p.requires_grad for p in module.parameters())}

    def export_student(self, path: str, repdistiller: bool = False, adapters: bool = False,
                       datamodule: Any = None) -> dict[str, str]:
        """Write the student for use without this library: ``path``, a plain state_dict that loads into its
        architecture; ``<stem>.json``, its preprocessing and classes (mean, std, image size, channels, class
        names, the network spec); ``<stem>.torchscript.pt`` and ``<stem>.onnx`` (the ``export`` extra),
        which take images on the [0, 1] scale and return class probabilities (:mod:`lightning_kd.export`).
        The preprocessing is the fit's (kept in its checkpoints) or ``datamodule``'s (after its setup).
        Without either (a module never fitted), the state_dict alone, and a line saying so. Returns {form:
        file}. With ``repdistiller``, only the network as the CRD code saves one (``{"model": state_dict}``
        under its names), which RepDistiller's and mdistiller's scripts load (a network of that code:
        :func:`~lightning_kd.checkpoints.save_repdistiller`); with ``adapters``, only
        ``{"student": state_dict, "adapters": {name: state_dict}}`` (:meth:`adapters`)."""
        if repdistiller and adapters:
            raise ValueError("export_student: RepDistiller's format holds one network; export the adapters "
                             "without repdistiller=True.")
        if repdistiller:
            save_repdistiller(self.student, path)
            return {"repdistiller": str(path)}
        if adapters:
            torch.save({"student": self.student.state_dict(),
                        "adapters": {name: m.state_dict() for name, m in self.adapters().items()}}, path)
            return {"adapters": str(path)}
        prep = preprocessing(datamodule) if datamodule is not None else self.preprocessing
        if prep is None:
            torch.save(self.student.state_dict(), path)
            print(f"export: the state_dict {path} alone: {type(self).__name__} has no record of its data's "
                  f"preprocessing (export from a checkpoint of a fit, or pass datamodule= after its setup, for "
                  f"the .json, TorchScript and ONNX files)", flush=True)
            return {"state_dict": str(path)}
        spec = self.student_spec
        if is_pretrained(spec):  # the architecture without fetching the published weights again
            spec = {**spec, **{k: None if k == "weights" else False for k in ("weights", "pretrained") if k in spec}}
        net = build_network(spec, self.num_classes, self.input_shape[0])
        net.load_state_dict(self.student.state_dict())
        try:
            import onnx  # noqa: F401 - torch's exporter needs it
        except ImportError:
            onnx = None
            print("export: no ONNX file (pip install 'lightning_kd[export]' installs onnx and onnxruntime)")
        files = export(net.eval(), self.student_spec, prep, path, onnx=onnx is not None)
        print("export: " + ", ".join(f"{form} {file}" for form, file in files.items()), flush=True)
        return files


class DistillationModule(StudentModule):
    """A student distilled from a :class:`~lightning_kd.teacher.FrozenTeacher` (never trained, never in a
    checkpoint): the base of every teacher-based method, which writes :meth:`distill_losses`.
    Validation also logs ``teacher/acc`` and ``val/agreement`` (student-teacher top-1 agreement).

    Args:
        teacher: the teacher network, same forms as ``student``.
        teacher_ckpt: the teacher's weights: a Lightning ``.ckpt`` of a ``Supervised`` run or a
            plain state_dict file, read with ``weights_only=True``. May be left out for a teacher spec
            with published weights whose head already has the data's classes (e.g. an ImageNet
            teacher on ImageNet-class data; one with a new head needs fine-tuned weights here), and for
            a :class:`~lightning_kd.models.CheckpointEnsemble` teacher, which reads its members' files.
        cache_teacher_outputs: compute the teacher's logits once per training sample and reuse them
            in later epochs. Only without random augmentation (data ``pad: 0``, ``flip: false``,
            ``return_index: true``) and for methods that read only logits; else refused before training.
        balance: loss balancing: the largest ratio of a distillation term's weighted value to the
            weighted cross-entropy's in a step; a term above it is scaled down to it by a detached
            factor (its gradient shrinks, its direction stays), logged as ``train/scale/<term>``.
            None (default): the published weights as they are. Measured on a CIFAR-10 subset (500
            images/class, quickstart networks, 15 epochs, seed 0, best val top-1; baseline 43.5):
            RKD 30.9 -> 35.8 with balance 1, FitNet 37.8 -> 37.8: it narrows RKD's loss, not FitNet's.
        **kwargs: see :class:`StudentModule`. Under ``precision: bf16-mixed`` the teacher runs with
            bfloat16 weights, restored exactly after the fit.
    """

    def __init__(self, student: NetSpec, teacher: Optional[NetSpec] = None, teacher_ckpt: Optional[str] = None,
                 cache_teacher_outputs: bool = False, balance: Optional[float] = None, **kwargs):
        super().__init__(student=student, **kwargs)
        if balance is not None and not balance > 0:
            raise ValueError(f"balance is the largest ratio of a distillation term to the cross-entropy and must "
                             f"be > 0 (or null: off), got {balance}.")
        self.balance = balance
        if teacher is None:
            raise ValueError(f"{type(self).__name__} distills from a teacher: set `teacher` (the network spec) and "
                             f"`teacher_ckpt` (its trained weights, e.g. best.ckpt of a Supervised run).")
        try:
            self.teacher = FrozenTeacher(teacher, teacher_ckpt, self.num_classes, self.input_shape[0])
        except WeightsMismatchError as err:
            if not self.not_given:
                raise
            raise ValueError(f"{err} The networks were built for num_classes={self.num_classes}, input_shape="
                             f"{self.input_shape}{self.default_note()}: pass the data's, {type(self).__name__}("
                             f"..., num_classes=data.num_classes, input_shape=data.input_shape).") from err
        self.cache_teacher_outputs = cache_teacher_outputs
        self.teacher_acc, self.agreement = accuracy(self.num_classes), accuracy(self.num_classes)

    def distill_losses(self, student: Optional[NetOutput], teacher: Optional[NetOutput],
                       batch: Batch) -> dict[str, Tensor]:
        """Unweighted loss terms of one batch from the two outputs (logits and the watched features)."""
        raise NotImplementedError(f"{type(self).__name__} must implement distill_losses(student, teacher, batch)")

    def forwards(self) -> tuple[bool, bool]:
        """Which networks this step runs, (teacher, student); two-stage methods narrow it per stage."""
        return True, True

    def watch_layers(self, student: Sequence[str], teacher: Sequence[str]) -> tuple[dict, dict]:
        """Declare the layers the method reads: every step's outputs carry their features from now on.
        Returns the features of one :meth:`example_input`, to size adapters."""
        self.teacher.watch(teacher)
        return self.watch_student(student), self.teacher(self.example_input()).features

    def step_losses(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        runs_teacher, runs_student = self.forwards()
        teacher = self.teacher(batch.x, batch.index) if runs_teacher else None
        student = self.student_forward(batch.x) if runs_student else None
        losses = self.distill_losses(student, teacher, batch)
        return losses, self.balance_scales(losses)

    def balance_scales(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Detached factors that bring every term whose weighted size exceeds ``balance`` x the weighted
        CE down to that bound (see ``balance``); none when balance is off or the step has no CE."""
        ce_weight = self.loss_weights.get("ce", 0.0)
        if self.balance is None or "ce" not in losses or ce_weight == 0:
            return {}
        bound = self.balance * ce_weight * losses["ce"].detach().abs()
        return {name: (bound / (self.loss_weights.get(name, 1.0) * value.detach().abs()).clamp_min(1e-12)).clamp(max=1.0)
                for name, value in losses.items() if name != "ce"}

    def evaluation_outputs(self, x: Tensor) -> tuple[NetOutput, Optional[NetOutput]]:
        return self.student_forward(x), self.teacher(x)

    def evaluate(self, batch, stage: str) -> tuple[NetOutput, Optional[NetOutput], Tensor]:
        student, teacher, y = super().evaluate(batch, stage)
        if stage == "val":
            self.teacher_acc.update(teacher.logits, y)
            self.agreement.update(student.logits, teacher.logits.argmax(1))
            self.log("teacher/acc", self.teacher_acc)
            self.log("val/agreement", self.agreement)
            self.validation_extras(student, teacher, y)
        return student, teacher, y

    def validation_extras(self, student: NetOutput, teacher: NetOutput, y: Tensor) -> None:
        """Method-specific logs from the outputs of a validation batch (none here)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TEACHER_FILES] = self.teacher.files  # the teacher pinned by content (lightning_kd.resume)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)  # a resume's settings first
        trainer = attached_trainer(self)
        where = f"ckpt_path {str(trainer.ckpt_path)!r}" if trainer is not None and trainer.ckpt_path else "the checkpoint"
        check_teacher_files(checkpoint.get(TEACHER_FILES) or {}, self.teacher.files, where)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.teacher.setup(stage, self.trainer, self.channels_last, self.compile_networks, self.cache_teacher_outputs)

    def teardown(self, stage: str) -> None:
        self.teacher.teardown()
