"""RCO: record a teacher's training route, then distill from its anchor points, easiest first.

Jin et al. "Knowledge Distillation via Route Constrained Optimization", ICCV 2019,
https://arxiv.org/abs/1904.09149. :class:`RouteRecorder` saves the anchors while the teacher
trains; :class:`RouteConstrainedTeacher` loads them into the frozen teacher of a student run.

A route folder holds one plain state_dict per anchor (``epoch0149.pt``, ...) and the manifest
``route.json``: a list of ``{"epoch", "step", "val_acc", "file"}`` sorted by epoch, where
``epoch`` is the 0-based epoch at whose end the weights were taken and ``file`` is relative to
the folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from lightning_kd.callbacks.finite import check_sound
from lightning_kd.checkpoints import atomic_save
from lightning_kd.losses import kd_loss
from lightning_kd.schedules import check_fractions, epoch_of, fit_to_run
from lightning_kd.teacher import FrozenTeacher

MANIFEST = "route.json"
SCHEDULES = ("even", "greedy")
LR_SCHEDULES = ("per_anchor", "whole_run")


def anchor_filename(epoch: int) -> str:
    return f"epoch{epoch:04d}.pt"


def write_manifest(dirpath: Union[str, Path], entries: list[dict]) -> Path:
    """Write ``route.json`` atomically (a killed run never leaves half a manifest)."""
    path = Path(dirpath) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(sorted(entries, key=lambda e: e["epoch"]), indent=1))
    os.replace(tmp, path)
    return path


def anchor_what(dirpath: Union[str, Path], epoch: int) -> str:
    return f"the RCO route anchor {str(Path(dirpath) / anchor_filename(epoch))!r}"


def save_anchor(dirpath: Union[str, Path], epoch: int, state: dict[str, Tensor]) -> str:
    """Save one anchor as a plain state_dict (loads with ``weights_only=True``), atomically; returns its name.
    A non-finite tensor is refused first (:func:`~lightning_kd.callbacks.finite.check_sound`)."""
    check_sound(state, anchor_what(dirpath, epoch))
    name = anchor_filename(epoch)
    atomic_save({k: v.detach().cpu() for k, v in state.items()}, Path(dirpath) / name)
    return name


def write_route(dirpath: Union[str, Path], states: Sequence[dict[str, Tensor]]) -> list[Path]:
    """A route folder holding ``states`` as the anchors of epochs 0, 1, ... (RouteRecorder's
    layout, without validation accuracies), for benchmarks and tests that need a route without
    training a teacher. Returns the anchor files."""
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    files = [save_anchor(dirpath, epoch, state) for epoch, state in enumerate(states)]
    write_manifest(dirpath, [{"epoch": e, "step": e, "val_acc": None, "file": f} for e, f in enumerate(files)])
    return [dirpath / f for f in files]


def read_manifest(route_dir: Union[str, Path]) -> list[dict]:
    """The anchors of a route folder, sorted by epoch; clear errors for a missing or broken route."""
    route_dir = Path(route_dir)
    path = route_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"route folder {str(route_dir)!r} has no manifest {MANIFEST}: train the teacher with the "
            f"lightning_kd.callbacks.RouteRecorder callback (it writes <checkpoint dirpath>/route/{MANIFEST}) and "
            f"point route_dir at that folder.")
    try:
        entries = json.loads(path.read_text())
        entries = sorted(entries, key=lambda e: int(e["epoch"]))
        files = [route_dir / e["file"] for e in entries]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"route manifest {str(path)!r} is not a list of {{epoch, val_acc, file}} "
                         f"entries ({type(err).__name__}: {err}); re-record the route.") from None
    if not entries:
        raise ValueError(f"route manifest {str(path)!r} lists no anchors; re-record the route.")
    epochs = [int(e["epoch"]) for e in entries]
    twice = sorted({e for e in epochs if epochs.count(e) > 1})
    if twice:
        raise ValueError(f"route manifest {str(path)!r} lists epoch(s) {twice} twice: it mixes two recordings; "
                         f"re-record the route (train the teacher again into an empty folder).")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"route manifest {str(path)!r} names anchor files that do not exist: "
                                f"{missing}. Restore them or re-record the route.")
    return entries


def scheduled_milestone_epochs(trainer: pl.Trainer) -> Optional[set[int]]:
    """Epochs after which an epoch-wise step scheduler lowers the LR; None if it cannot be read."""
    epochs: set[int] = set()
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if config.interval != "epoch" or config.frequency != 1:
            return None
        if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
            drops = set(scheduler.milestones)
        elif isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
            drops = set(range(scheduler.step_size, trainer.max_epochs + 1, scheduler.step_size))
        else:
            return None
        # The scheduler steps after epoch e with last_epoch -> e + 1; the LR drops when that is a milestone.
        epochs |= {m - 1 for m in drops if m >= 1}
    return epochs


class RouteRecorder(Callback):
    """Saves a teacher's weights along its training route: the anchors of RCO.

    "Knowledge Distillation via Route Constrained Optimization" (Jin et al., ICCV 2019),
    https://arxiv.org/abs/1904.09149. Use it while training the teacher with
    :class:`~lightning_kd.methods.Supervised`; the network saved is ``pl_module.student``.
    An anchor is saved at the end of an epoch when

    - it is one of ``num_anchors`` evenly spaced epochs (the ends of ``num_anchors`` equal parts of
      the run: epochs ``round(k * max_epochs / num_anchors) - 1`` for ``k = 1 .. num_anchors``,
      0-based, so a shortened run keeps the same route shape),
    - ``at_milestones`` and the LR scheduler lowers the LR after this epoch (the weights just
      before the drop, which the paper's authors recommend as anchors; read from ``MultiStepLR``
      or ``StepLR``),
    - it is the last epoch of the fit (the final weights).

    The anchors and the manifest ``route.json`` go to ``dirpath`` (default
    ``<checkpoint dirpath>/route``), written by rank zero only. The list of anchors is part of
    Lightning checkpoints, so a resumed run continues the same manifest (an epoch saved twice
    replaces its entry, never duplicates it).

    Args:
        num_anchors: evenly spaced anchors over the run (None: only milestones and the final weights).
        at_milestones: save before every LR drop of the scheduler.
        dirpath: the route folder.
    """

    def __init__(self, num_anchors: Optional[int] = None, at_milestones: bool = True,
                 dirpath: Optional[str] = None):
        if num_anchors is not None and (int(num_anchors) != num_anchors or num_anchors < 1):
            raise ValueError(f"RouteRecorder num_anchors must be a positive integer or None, "
                             f"got {num_anchors!r}.")
        self.num_anchors = num_anchors
        self.even_epochs: set[int] = set()
        self.at_milestones = at_milestones
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.entries: list[dict] = []
        self.milestone_epochs: set[int] = set()
        self._val_acc: tuple[int, Optional[float]] = (-1, None)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_milestones:
            milestones = scheduled_milestone_epochs(trainer)
            if milestones is None:
                names = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
                raise ValueError(
                    f"RouteRecorder(at_milestones=True) reads LR drops from an epoch-wise MultiStepLR or "
                    f"StepLR, but the schedulers are {names} (a smooth schedule changes the LR every "
                    f"epoch, or steps per batch): set at_milestones: false and num_anchors.")
            self.milestone_epochs = milestones
        if self.num_anchors is not None:
            n, epochs = self.num_anchors, trainer.max_epochs
            self.even_epochs = {max(round(k * epochs / n), 1) - 1 for k in range(1, n + 1)}
        if self.dirpath is None:
            root = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
            self.dirpath = Path(root or trainer.default_root_dir) / "route"
        if not self.entries and (self.dirpath / MANIFEST).is_file():  # a fresh run (a resumed one has entries)
            raise FileExistsError(
                f"the route folder {str(self.dirpath)!r} already holds another run's route: a teacher's route "
                f"and checkpoints come from one run. Resume that run (--ckpt_path), start over with --overwrite, "
                f"or record into another folder (RouteRecorder dirpath).")
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            acc = trainer.callback_metrics.get("val/acc")
            self._val_acc = (trainer.current_epoch, None if acc is None else float(acc))

    def should_save(self, epoch: int, max_epochs: int) -> bool:
        return epoch in self.even_epochs or epoch in self.milestone_epochs or epoch + 1 == max_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.should_save(trainer.current_epoch, trainer.max_epochs):
            self.record(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Stopped early (early stopping, max_steps): the weights it ends with are the final anchor.
        if not self.entries or self.entries[-1]["step"] != trainer.global_step:
            self.record(trainer, pl_module, max(trainer.current_epoch - 1, 0))

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        state = pl_module.student.state_dict()
        # The check of every written file, on every process (they hold the same weights, so all stop together).
        check_sound(state, anchor_what(self.dirpath, epoch), trainer, [n for n, _ in pl_module.student.named_parameters()])
        epoch_of_acc, acc = self._val_acc
        entry = {"epoch": epoch, "step": trainer.global_step,
                 "val_acc": acc if epoch_of_acc == epoch else None, "file": anchor_filename(epoch)}
        self.entries = [e for e in self.entries if e["epoch"] != epoch] + [entry]
        if trainer.is_global_zero:
            save_anchor(self.dirpath, epoch, state)
            write_manifest(self.dirpath, self.entries)

    def state_dict(self) -> dict:
        return {"entries": self.entries}

    def load_state_dict(self, state_dict: dict) -> None:
        self.entries = list(state_dict["entries"])


class RouteConstrainedTeacher(Callback):
    """Distills from a teacher's route: the frozen teacher moves through the recorded anchors.

    "Knowledge Distillation via Route Constrained Optimization" (Jin et al., ICCV 2019),
    https://arxiv.org/abs/1904.09149. The student first mimics an early, easy teacher and then
    ever later ones, ending on the converged teacher. Works with any teacher-based method (KD by
    default): anchor ``i``'s weights are loaded in place into ``pl_module.teacher``, so the
    method's feature hooks stay attached. The schedule:

    - ``"even"``: the epochs split evenly over the anchors (epoch ``e`` uses anchor
      ``e * num_anchors // max_epochs``).
    - a list of switch points ``[s_1, ..., s_{n-1}]``, fractions of the run: anchor ``k`` takes over
      at epoch ``round(s_k * max_epochs)``.
    - ``"greedy"``: at each stage end of the even split, the student's KL divergence
      ``KL(p_anchor || p_student)`` to every later anchor is measured on ``probe_size`` training
      images held out of training (not on the validation split, which picks ``best.ckpt``), and the
      teacher moves to the furthest anchor whose divergence is at most ``threshold`` (to the next
      anchor if none is).

    The LR schedule (``lr_schedule``):

    - ``"per_anchor"`` (default, the paper's Algorithm 1, which optimizes the student fully against
      each anchor in turn): the configured relative schedule restarts at every stage (the stages of
      the even split or of the explicit list; greedy's stages are the even split's) and spans that
      stage's epochs, so every anchor is trained from the initial LR down to the final one. The
      optimizer's momentum carries over.
    - ``"whole_run"``: one schedule spans the whole run, so the early anchors are only ever trained
      at the high LR and the converged teacher only at the low ones.

    The current anchor is logged as ``train/rco_anchor`` and saved in checkpoints, with the stage
    whose schedule is running; a resumed run continues on the same anchor, weights and LR.

    The model's ``teacher_ckpt`` names the teacher run: by default the route is read from the
    ``route`` folder next to it, where :class:`RouteRecorder` writes it (``teacher_ckpt:
    runs/x/teacher/best.ckpt`` -> ``runs/x/teacher/route``), so pointing a run at another teacher
    moves the route along. Its weights only stand in until the fit starts: the callback loads the
    first anchor (a resumed run's anchor) then, and the teacher holds the last active anchor after it.

    Args:
        route_dir: the folder :class:`RouteRecorder` wrote (with ``route.json``); default: the
            ``route`` folder next to the model's ``teacher_ckpt``.
        schedule: ``"even"``, ``"greedy"`` or a list of switch points (fractions of the run).
        threshold: greedy's largest divergence (nats, >= 0) for moving to an anchor.
        probe_size: training images greedy holds out of training and measures on (needs a
            datamodule with ``hold_out_of_train``, as every in-memory datamodule of the library).
        lr_schedule: ``"per_anchor"`` (default, the paper's) or ``"whole_run"``.
    """

    def __init__(self, route_dir: Optional[str] = None, schedule: Union[str, list[int]] = "even",
                 threshold: float = 0.5, probe_size: int = 256, lr_schedule: str = "per_anchor"):
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(f"RouteConstrainedTeacher schedule must be one of {SCHEDULES} or a list of "
                             f"switch points (fractions of the run), got {schedule!r}.")
        if not threshold >= 0:
            raise ValueError(f"RouteConstrainedTeacher threshold is a KL divergence bound and must be "
                             f">= 0, got {threshold}.")
        if int(probe_size) != probe_size or probe_size < 1:
            raise ValueError(f"RouteConstrainedTeacher probe_size must be a positive integer, got {probe_size!r}.")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"RouteConstrainedTeacher lr_schedule must be one of {LR_SCHEDULES} (per_anchor: "
                             f"the paper's), got {lr_schedule!r}.")
        if not isinstance(schedule, str):
            schedule = check_fractions(schedule, "RouteConstrainedTeacher switch points")
            if any(b <= a for a, b in zip(schedule, schedule[1:])) or schedule[-1] >= 1:
                raise ValueError(f"switch points must be strictly increasing fractions of the run below 1, "
                                 f"got {schedule}.")
        self.schedule = schedule
        self.threshold = float(threshold)
        self.probe_size = int(probe_size)
        self.lr_schedule = lr_schedule
        self.index = 0  # the active anchor (saved in checkpoints)
        self.schedule_start = -1  # first epoch of the stage whose LR schedule runs (saved in checkpoints)
        self.anchors: list[dict[str, Tensor]] = []
        self.divergences: dict[int, float] = {}  # greedy's last measurement, anchor -> KL
        self._loaded: Optional[int] = None
        self._probe: Optional[tuple[Tensor, Tensor]] = None
        self.route_dir: Optional[Path] = None
        self.entries: list[dict] = []
        if route_dir is not None:  # checked now; else in setup, once teacher_ckpt is known
            self.read_route(Path(route_dir))

    def read_route(self, route_dir: Path) -> None:
        self.route_dir, self.entries = route_dir, read_manifest(route_dir)
        n = len(self.entries)
        if isinstance(self.schedule, list) and len(self.schedule) != n - 1:
            raise ValueError(f"an explicit schedule lists the point at which each anchor after the first "
                             f"takes over: {n - 1} points for the {n} anchors of {str(route_dir)!r}, "
                             f"got {self.schedule}.")

    @property
    def num_anchors(self) -> int:
        return len(self.entries)

    # ----------------------------------------------------------------- checks and loading
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(getattr(pl_module, "teacher", None), FrozenTeacher):
            raise TypeError(f"RouteConstrainedTeacher moves a frozen teacher along its route, but "
                            f"{type(pl_module).__name__} has no teacher; use a teacher-based method "
                            f"such as lightning_kd.methods.KD.")
        if self.route_dir is None:
            teacher_ckpt = getattr(pl_module, "hparams", {}).get("teacher_ckpt")
            if not teacher_ckpt:
                raise ValueError("RouteConstrainedTeacher finds the route next to the model's teacher_ckpt, "
                                 "but there is none: set route_dir.")
            self.read_route(Path(teacher_ckpt).parent / "route")
        max_epochs = trainer.max_epochs
        if not trainer.fast_dev_run and (max_epochs is None or max_epochs < 1):
            raise ValueError("RouteConstrainedTeacher schedules anchors over epochs: set trainer.max_epochs.")
        if isinstance(self.schedule, list) and not trainer.fast_dev_run:
            switches = [epoch_of(f, max_epochs) for f in self.schedule]
            if any(b <= a for a, b in zip(switches, switches[1:])) or switches[-1] >= max_epochs:
                raise ValueError(f"the switch points {self.schedule} fall on epochs {switches} of a "
                                 f"{max_epochs}-epoch run: they need distinct epochs below {max_epochs}; "
                                 f"raise max_epochs or use schedule: even.")
        if self.schedule == "greedy":
            hold_out = getattr(trainer.datamodule, "hold_out_of_train", None)
            if hold_out is None:
                raise ValueError(f"RouteConstrainedTeacher(schedule='greedy') measures the student on training "
                                 f"images held out of training, but {type(trainer.datamodule).__name__} has no "
                                 f"hold_out_of_train: use a datamodule of lightning_kd.datamodules, or 'even'.")
            self._probe = hold_out(self.probe_size)
        # Every anchor is checked against the teacher's architecture before the first step.
        self.anchors = [pl_module.teacher.read_weights(self.route_dir / entry["file"], "RCO route anchor")
                        for entry in self.entries]

    def activate(self, pl_module: pl.LightningModule, index: int) -> None:
        pl_module.teacher.load_weights(self.anchors[index])
        self.index = self._loaded = index

    def stage_of(self, epoch: int, max_epochs: int) -> tuple[int, int]:
        """First epoch and length of the stage (a run of epochs with one scheduled anchor) of ``epoch``."""
        index = self.scheduled_index(epoch, max_epochs)
        epochs = [e for e in range(max_epochs) if self.scheduled_index(e, max_epochs) == index]
        return epochs[0], len(epochs)

    def restart_lr_schedule(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int) -> None:
        """A fresh schedule from the initial LR over the next ``epochs`` epochs."""
        factory = getattr(pl_module, "lr_scheduler_factory", None)
        for config in trainer.lr_scheduler_configs if factory is not None else []:
            optimizer = config.scheduler.optimizer
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"]
            config.scheduler = fit_to_run(factory(optimizer), epochs)

    def scheduled_index(self, epoch: int, max_epochs: int) -> int:
        """The anchor of ``epoch`` under the "even" split or an explicit list."""
        if isinstance(self.schedule, list):
            return sum(epoch >= epoch_of(s, max_epochs) for s in self.schedule)
        return min(epoch * self.num_anchors // max(max_epochs, 1), self.num_anchors - 1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.lr_schedule == "per_anchor" and not trainer.fast_dev_run:
            fixed = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs
                     if not hasattr(c.scheduler, "set_epochs")]
            if fixed:
                raise ValueError(f"RouteConstrainedTeacher(lr_schedule='per_anchor') restarts the LR schedule for "
                                 f"each anchor's epochs, so it needs a schedule relative to the run "
                                 f"(lightning_kd.schedules.RelativeMultiStepLR / RelativeCosineAnnealingLR), "
                                 f"but {fixed} keeps absolute epochs: use a relative one, or lr_schedule: whole_run.")
        # Callback state is restored before this hook, so a resumed run reloads its anchor here.
        self.activate(pl_module, self.index)
        if self.lr_schedule == "per_anchor" and self.schedule_start >= 0:
            # A resumed run: the checkpoint holds the running stage's schedule, which loads after this
            # hook into a scheduler of that stage's length (and ResumeCheck compares the two).
            self.restart_lr_schedule(trainer, pl_module, self.stage_of(self.schedule_start, trainer.max_epochs)[1])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.schedule != "greedy":
            self.index = self.scheduled_index(epoch, trainer.max_epochs)
        if self.index != self._loaded:
            self.activate(pl_module, self.index)
        if self.lr_schedule == "per_anchor" and not trainer.fast_dev_run:
            start, length = self.stage_of(epoch, trainer.max_epochs)
            if start == epoch and self.schedule_start != start:  # a resumed stage keeps its restored schedule
                self.restart_lr_schedule(trainer, pl_module, length)
                self.schedule_start = start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.logs_step_values():  # a Python number: a host-device copy, only where it is logged
            pl_module.log("train/rco_anchor", float(self.index), on_step=True, on_epoch=False, batch_size=1)

    # ----------------------------------------------------------------- greedy
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        stage_end = (epoch + 1 < trainer.max_epochs and self.scheduled_index(epoch + 1, trainer.max_epochs)
                     != self.scheduled_index(epoch, trainer.max_epochs))
        if self.schedule == "greedy" and stage_end and self.index < self.num_anchors - 1:
            self.divergences = self.measure(trainer, pl_module)
            below = [j for j, kl in self.divergences.items() if kl <= self.threshold]
            self.activate(pl_module, max(below, default=self.index + 1))
            for j, kl in self.divergences.items():
                pl_module.log(f"train/rco_kl_anchor{j}", kl, on_step=False, on_epoch=True)

    @torch.no_grad()
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[int, float]:
        """Mean ``KL(p_anchor || p_student)`` over the held-out training images, for every later anchor."""
        batches = [trainer.precision_plugin.convert_input(x.to(pl_module.device))
                   for x in self._probe[0].split(256)]
        student = pl_module.student
        was_training = student.training
        student.eval()
        try:
            with trainer.precision_plugin.forward_context():
                student_logits = [student(x) for x in batches]
                sums = []
                for j in range(self.index + 1, self.num_anchors):
                    pl_module.teacher.load_weights(self.anchors[j])
                    sums.append(sum(kd_loss(s, pl_module.teacher(x).logits, 1.0) * len(x)
                                    for s, x in zip(student_logits, batches)))
        finally:
            student.train(was_training)
        count = len(self._probe[1])
        totals = torch.stack([s.float() for s in sums] + [sums[0].new_tensor(float(count))])
        totals = trainer.strategy.reduce(totals, reduce_op="sum")  # all ranks agree
        kls = (totals[:-1] / totals[-1]).tolist()
        return {j: kl for j, kl in zip(range(self.index + 1, self.num_anchors), kls)}

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"index": self.index, "schedule_start": self.schedule_start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.index = int(state_dict["index"])
        self.schedule_start = int(state_dict.get("schedule_start", -1))
        if not 0 <= self.index < self.num_anchors:
            raise ValueError(f"the checkpoint's RCO anchor {self.index} is not in the route "
                             f"{str(self.route_dir)!r} ({self.num_anchors} anchors): resume with the "
                             f"route the run was started with.")
