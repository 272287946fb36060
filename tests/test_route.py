"""RCO: RouteRecorder writes the anchors it should, RouteConstrainedTeacher loads them exactly when it
should (even, explicit and greedy schedules, bf16 teacher), resumes exactly, and refuses bad input.

Also a script: ``python tests/test_route.py OUT_DIR record|distill`` runs one 2-process CPU DDP fit
(gloo); the slow test compares what each rank saved.
"""
from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from torch import nn

import helpers
from helpers.nets import tiny_mlp
from lightning_kd.callbacks import RouteConstrainedTeacher, RouteRecorder
from lightning_kd.callbacks.route import MANIFEST, anchor_filename, scheduled_milestone_epochs, write_route
from lightning_kd.datamodules import DigitsDataModule, SyntheticDataModule
from lightning_kd.datamodules.base import normalize
from lightning_kd.methods import KD, Supervised
from lightning_kd.models import build_network
from lightning_kd.schedules import RelativeMultiStepLR

SHAPE = (1, 8, 8)
STUDENT, TEACHER = {"name": "small_cnn", "width": 4}, {"name": "small_cnn", "width": 6}


def trainer(tmp_path, max_epochs, callbacks, **kwargs):
    return helpers.trainer(tmp_path, **{"max_epochs": max_epochs, "callbacks": callbacks, "limit_val_batches": 1,
                                        "num_sanity_val_steps": 0, **kwargs})


def digits():
    return DigitsDataModule(batch_size=16)


def random_route(folder, n: int, spec=TEACHER) -> list:
    states = []
    for seed in range(n):
        torch.manual_seed(100 + seed)
        states.append(build_network(spec, 10, 1).state_dict())
    return write_route(folder, states)


def kd_student(teacher_ckpt, teacher=TEACHER, student=STUDENT, lr=0.1):
    return KD(student=student, teacher=teacher, teacher_ckpt=str(teacher_ckpt), num_classes=10,
              input_shape=SHAPE, optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9))


def same_weights(net: nn.Module, path, dtype=None) -> bool:
    saved = torch.load(path, weights_only=True)
    return all(torch.equal(v, saved[k].to(dtype or saved[k].dtype)) for k, v in net.state_dict().items())


class TeacherWatch(Callback):
    """At every epoch start (after RouteConstrainedTeacher): the active anchor, and whether the
    teacher's weights equal that anchor's file exactly."""

    def __init__(self, rco, files, dtype=None):
        self.rco, self.files, self.dtype = rco, files, dtype
        self.anchors, self.exact = {}, {}

    def on_train_epoch_start(self, trainer, pl_module):
        epoch = trainer.current_epoch
        self.anchors[epoch] = self.rco.index
        self.exact[epoch] = same_weights(pl_module.teacher, self.files[self.rco.index], self.dtype)


class Crash(Exception):
    pass


class KillAt(Callback):
    """Simulates a crash at the start of an epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Crash(f"killed at the start of epoch {self.epoch}")


# ----------------------------------------------------------------------------- RouteRecorder
class EpochEndWatch(Callback):
    """The LR each epoch trains with, and the student's weights and val/acc at its end."""

    def __init__(self):
        self.weights, self.lr, self.val_acc = {}, {}, {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.lr[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch
        self.weights[epoch] = {k: v.clone() for k, v in pl_module.student.state_dict().items()}
        self.val_acc[epoch] = float(trainer.callback_metrics["val/acc"])


def supervised(scheduler=None):
    return Supervised(student=STUDENT, num_classes=10, input_shape=SHAPE,
                      optimizer=partial(torch.optim.SGD, lr=0.1), lr_scheduler=scheduler)


@pytest.mark.parametrize("num_anchors, milestones, expected", [
    (None, [2, 4], [1, 3, 4]),     # before each LR drop, plus the final epoch
    (2, [3], [1, 2, 4]),           # 2 even anchors (ends of epochs round(5/2) = 2 and 5), before the drop at 3
])
def test_recorder_saves_anchors_and_manifest(tmp_path, num_anchors, milestones, expected):
    pl.seed_everything(0)
    watch, recorder = EpochEndWatch(), RouteRecorder(num_anchors=num_anchors, dirpath=tmp_path / "route")
    scheduler = partial(torch.optim.lr_scheduler.MultiStepLR, milestones=milestones, gamma=0.1)
    trainer(tmp_path, 5, [watch, recorder]).fit(supervised(scheduler), digits())
    manifest = json.loads((tmp_path / "route" / MANIFEST).read_text())
    assert [e["epoch"] for e in manifest] == expected
    for entry in manifest:
        saved = torch.load(tmp_path / "route" / entry["file"], weights_only=True)
        assert saved.keys() == watch.weights[entry["epoch"]].keys()
        assert all(torch.equal(saved[k], v) for k, v in watch.weights[entry["epoch"]].items())
        assert entry["val_acc"] == pytest.approx(watch.val_acc[entry["epoch"]])
    for epoch in milestones:  # the anchor is the last epoch at the old LR
        assert epoch - 1 in expected and watch.lr[epoch] < watch.lr[epoch - 1]
    assert sorted(p.name for p in (tmp_path / "route").glob("*.pt")) == [anchor_filename(e) for e in expected]


def test_step_lr_milestones():
    scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 3)
    fake = SimpleNamespace(max_epochs=10, lr_scheduler_configs=[
        SimpleNamespace(scheduler=scheduler, interval="epoch", frequency=1)])
    assert scheduled_milestone_epochs(fake) == {2, 5, 8}  # drops after epochs 2, 5, 8 (0-based)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.step()
    assert {e for e in range(9) if lrs[e + 1] < lrs[e]} == {2, 5, 8}


def test_recorder_refuses_smooth_schedule_at_milestones(tmp_path):
    model = supervised(partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=3))
    fit = trainer(tmp_path, 3, [RouteRecorder(dirpath=tmp_path / "route")])
    with pytest.raises(ValueError, match="at_milestones: false"):
        fit.fit(model, digits())
    assert fit.global_step == 0


def test_recorder_resume_continues_the_manifest(tmp_path):
    def run(folder, max_epochs, kill=None, ckpt_path=None):
        pl.seed_everything(0)
        saver = ModelCheckpoint(dirpath=folder / "ckpt", filename="e{epoch}", save_top_k=-1,
                                auto_insert_metric_name=False)
        callbacks = ([KillAt(kill)] if kill else []) + [RouteRecorder(num_anchors=3, at_milestones=False)]
        trainer(folder, max_epochs, callbacks + [saver], enable_checkpointing=True).fit(
            supervised(), digits(), ckpt_path=ckpt_path)
        return folder / "ckpt" / "route"

    whole = run(tmp_path / "whole", 3)
    with pytest.raises(Crash):
        run(tmp_path / "parts", 3, kill=2)
    assert [e["epoch"] for e in json.loads((tmp_path / "parts/ckpt/route" / MANIFEST).read_text())] == [0, 1]
    parts = run(tmp_path / "parts", 3, ckpt_path=tmp_path / "parts/ckpt/e1.ckpt")
    expected, got = (json.loads((d / MANIFEST).read_text()) for d in (whole, parts))
    assert got == expected and [e["epoch"] for e in got] == [0, 1, 2]  # no duplicates, same val_acc
    for entry in got:
        a, b = (torch.load(d / entry["file"], weights_only=True) for d in (whole, parts))
        assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- schedules
def test_record_then_distill_reads_the_route_next_to_teacher_ckpt(tmp_path):
    """The pipeline of the configs: a teacher run records its route next to its checkpoints; a KD run
    whose teacher_ckpt is that run's last.ckpt walks the route without being told where it is."""
    pl.seed_everything(0)
    saver = ModelCheckpoint(dirpath=tmp_path / "teacher", save_last=True)
    trainer(tmp_path, 3, [RouteRecorder(num_anchors=3, at_milestones=False), saver],
            enable_checkpointing=True).fit(supervised(), digits())
    files = [tmp_path / "teacher/route" / e["file"]
             for e in json.loads((tmp_path / "teacher/route" / MANIFEST).read_text())]
    assert [f.name for f in files] == [anchor_filename(e) for e in range(3)]

    model = kd_student(tmp_path / "teacher/last.ckpt", teacher=STUDENT)
    rco = RouteConstrainedTeacher()
    watch = TeacherWatch(rco, files)
    trainer(tmp_path, 3, [rco, watch]).fit(model, digits())
    assert rco.route_dir == tmp_path / "teacher/route"
    assert watch.anchors == {0: 0, 1: 1, 2: 2} and all(watch.exact.values())


@pytest.mark.parametrize("schedule, expected", [("even", [0, 0, 1, 2]), ([0.25, 0.75], [0, 1, 1, 2])])
def test_teacher_equals_anchor_at_scheduled_epochs(tmp_path, schedule, expected):
    files = random_route(tmp_path / "route", 3)
    pl.seed_everything(0)
    model = kd_student(files[-1])
    rco = RouteConstrainedTeacher(str(tmp_path / "route"), schedule=schedule)
    watch = TeacherWatch(rco, files)
    fit = trainer(tmp_path, 4, [rco, watch])
    fit.fit(model, digits())
    assert [watch.anchors[e] for e in range(4)] == expected
    assert all(watch.exact.values())
    assert float(fit.callback_metrics["train/rco_anchor"]) == expected[-1]
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.net.parameters())
    assert same_weights(model.teacher, files[expected[-1]])  # the last active anchor stays


def test_bf16_teacher_holds_the_anchor_and_keeps_it_after_fit(tmp_path):
    files = random_route(tmp_path / "route", 2)
    pl.seed_everything(0)
    model = kd_student(files[0])  # teacher_ckpt = the first anchor, so teardown's original is anchor 0
    rco = RouteConstrainedTeacher(str(tmp_path / "route"))
    watch = TeacherWatch(rco, files, dtype=torch.bfloat16)
    trainer(tmp_path, 2, [rco, watch], precision="bf16-mixed").fit(model, digits())
    assert watch.anchors == {0: 0, 1: 1} and all(watch.exact.values())
    assert all(p.dtype == torch.float32 for p in model.teacher.net.parameters())
    assert same_weights(model.teacher, files[1])  # exact float32 anchor 1, not the teacher_ckpt


class CachedLogitsWatch(Callback):
    """On each training batch: whether the logits the method reads equal the live teacher's."""

    def __init__(self):
        self.fresh = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        x, _, index = pl_module.unpack(batch)
        with torch.no_grad():
            self.fresh[(trainer.current_epoch, batch_idx)] = torch.equal(pl_module.teacher(x, index).logits,
                                                                         pl_module.teacher.net(x))


def test_a_switch_voids_cached_teacher_logits(tmp_path):
    files = random_route(tmp_path / "route", 2)
    pl.seed_everything(0)
    model = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=str(files[0]), num_classes=10, input_shape=SHAPE,
               cache_teacher_outputs=True)
    data = SyntheticDataModule(num_classes=10, input_shape=SHAPE, train_size=32, val_size=16, test_size=16,
                               batch_size=16, pad=0, flip=False, return_index=True)
    watch = CachedLogitsWatch()
    trainer(tmp_path, 2, [RouteConstrainedTeacher(str(tmp_path / "route")), watch],
            limit_train_batches=None).fit(model, data)
    assert len(watch.fresh) == 4 and all(watch.fresh.values())  # epoch 1 sees every sample again


def kl_reference(student_logits, teacher_logits):
    """Mean over samples of sum_c p_t log(p_t / p_s), float64."""
    p_t = torch.softmax(teacher_logits.double(), 1)
    return (p_t * (p_t.log() - torch.log_softmax(student_logits.double(), 1))).sum(1).mean().item()


@pytest.mark.parametrize("case", ["furthest_under", "all_under", "none_under"])
def test_greedy_moves_to_the_furthest_anchor_under_threshold(tmp_path, case):
    """A frozen student (lr 0, no BatchNorm) and anchors of known divergence: the student itself with
    its classifier scaled by -1, 1.1 and -3. Anchor 2 is close; anchors 1 and 3 are far."""
    torch.manual_seed(0)
    student = tiny_mlp()
    student.fc.weight.data *= 5  # sharper outputs, so the flipped anchors are far from it
    route = [tiny_mlp().state_dict()]
    for scale in (-1.0, 1.1, -3.0):
        state = {k: v.clone() for k, v in student.state_dict().items()}
        state["fc.weight"] *= scale
        state["fc.bias"] *= scale
        route.append(state)
    files = write_route(tmp_path / "route", route)
    torch.save(student.state_dict(), tmp_path / "student.pt")

    probe_data = digits()
    probe_data.setup()
    x, _ = probe_data.hold_out_of_train(64)  # the callback's probe: the same seeded choice
    probe = tiny_mlp()
    kls = {}
    for j in (1, 2, 3):
        probe.load_state_dict(route[j])
        kls[j] = kl_reference(student(x), probe(x))
    assert kls[2] < min(kls[1], kls[3])
    threshold, expected = {"furthest_under": ((kls[2] + min(kls[1], kls[3])) / 2, 2),
                           "all_under": (2 * max(kls.values()), 3),
                           "none_under": (kls[2] / 2, 1)}[case]

    spec = "helpers.nets.tiny_mlp"
    model = KD(student=spec, teacher=spec, teacher_ckpt=str(files[0]), num_classes=10, input_shape=SHAPE,
               optimizer=partial(torch.optim.SGD, lr=0.0))
    model.student.load_state_dict(student.state_dict())
    rco = RouteConstrainedTeacher(str(tmp_path / "route"), schedule="greedy", threshold=threshold, probe_size=64)
    watch = TeacherWatch(rco, files)
    data = digits()
    trainer(tmp_path, 2, [rco, watch]).fit(model, data)  # 4 anchors over 2 epochs: a stage end after epoch 0
    full = DigitsDataModule()
    full.setup()
    rows = {name: normalize(images, data.mean, data.std).flatten(1)
            for name, images in (("full", full.splits["train"][0]), ("train", data.splits["train"][0]))}
    assert len(rows["train"]) == 1257 - 64 == len(probe_data.splits["train"][0])

    def copies(among, images):  # how often each probe image occurs among ``images`` (digits has duplicates)
        return (among[:, None] == images.flatten(1)[None]).all(-1).sum(0)

    # each probe image left the training split: full = train + probe, image by image
    assert torch.equal(copies(rows["full"], x), copies(rows["train"], x) + copies(x.flatten(1), x))
    assert rco.divergences.keys() == kls.keys()
    assert all(rco.divergences[j] == pytest.approx(kls[j], rel=1e-4, abs=1e-6) for j in kls)
    assert watch.anchors == {0: 0, 1: expected} and all(watch.exact.values())


# ----------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("schedule", ["even", "greedy"])
def test_resume_after_a_switch_equals_the_uninterrupted_run(tmp_path, schedule):
    files = random_route(tmp_path / "route", 3)

    def run(folder, kill=None, ckpt_path=None):
        pl.seed_everything(0)
        model = kd_student(files[-1])
        rco = RouteConstrainedTeacher(str(tmp_path / "route"), schedule=schedule, threshold=0.05, probe_size=64)
        watch = TeacherWatch(rco, files)
        saver = ModelCheckpoint(dirpath=folder, filename="e{epoch}", save_top_k=-1,
                                auto_insert_metric_name=False)
        callbacks = ([KillAt(kill)] if kill is not None else []) + [rco, watch, saver]
        trainer(folder, 4, callbacks, enable_checkpointing=True).fit(model, digits(), ckpt_path=ckpt_path)
        return model, rco, watch

    whole, whole_rco, whole_watch = run(tmp_path / "whole")
    with pytest.raises(Crash):
        run(tmp_path / "parts", kill=3)
    saved = torch.load(tmp_path / "parts" / "e2.ckpt", weights_only=False)["callbacks"]
    saved = saved["RouteConstrainedTeacher"]
    # even: the anchor of epoch 2; greedy: its decision at the end of epoch 2, the anchor of epoch 3
    assert saved["index"] == whole_watch.anchors[2 if schedule == "even" else 3]
    resumed, resumed_rco, resumed_watch = run(tmp_path / "parts", ckpt_path=tmp_path / "parts" / "e2.ckpt")
    assert resumed_watch.anchors == {3: whole_watch.anchors[3]} and all(resumed_watch.exact.values())
    assert resumed_rco.index == whole_rco.index
    if schedule == "even":
        assert [whole_watch.anchors[e] for e in range(4)] == [0, 0, 1, 2]  # switches before and after the kill
    else:
        assert len(set(whole_watch.anchors.values())) > 1  # greedy did move during the run
    assert all(torch.equal(a, b) for a, b in zip(whole.student.state_dict().values(),
                                                 resumed.student.state_dict().values()))


# ----------------------------------------------------------------------------- LR schedule per anchor
class LRWatch(Callback):
    """The LR each epoch trains with (read after RouteConstrainedTeacher's epoch start)."""

    def __init__(self):
        self.lr = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.lr[trainer.current_epoch] = trainer.optimizers[0].param_groups[0]["lr"]


def kd_with_steps(teacher_ckpt):
    model = kd_student(teacher_ckpt)
    model.lr_scheduler_factory = partial(RelativeMultiStepLR, milestones=[0.5], gamma=0.1)
    return model


@pytest.mark.parametrize("lr_schedule, expected", [
    # 3 anchors over 6 epochs: stages of 2 epochs, each with its own drop at round(0.5 * 2) = 1 epoch in
    ("per_anchor", [0.1, 0.01, 0.1, 0.01, 0.1, 0.01]),
    # one drop at round(0.5 * 6) = 3 epochs into the run
    ("whole_run", [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]),
])
def test_lr_schedule_per_anchor_or_whole_run(tmp_path, lr_schedule, expected):
    files = random_route(tmp_path / "route", 3)
    watch = LRWatch()
    rco = RouteConstrainedTeacher(str(tmp_path / "route"), lr_schedule=lr_schedule)
    trainer(tmp_path, 6, [rco, watch]).fit(kd_with_steps(files[-1]), digits())
    assert [watch.lr[e] for e in range(6)] == pytest.approx(expected)


@pytest.mark.parametrize("resume_after", [1, 2])  # at a stage boundary; in the middle of a stage
def test_per_anchor_resume_equals_the_uninterrupted_run(tmp_path, resume_after):
    files = random_route(tmp_path / "route", 2)

    def run(folder, kill=None, ckpt_path=None):
        pl.seed_everything(0)
        model = kd_with_steps(files[-1])
        watch = LRWatch()
        saver = ModelCheckpoint(dirpath=folder, filename="e{epoch}", save_top_k=-1, auto_insert_metric_name=False)
        callbacks = ([KillAt(kill)] if kill is not None else []) + [RouteConstrainedTeacher(str(tmp_path / "route")),
                                                                     watch, saver]
        trainer(folder, 4, callbacks, enable_checkpointing=True).fit(model, digits(), ckpt_path=ckpt_path)
        return model, watch

    whole, whole_watch = run(tmp_path / "whole")
    assert [whole_watch.lr[e] for e in range(4)] == pytest.approx([0.1, 0.01, 0.1, 0.01])
    with pytest.raises(Crash):
        run(tmp_path / "parts", kill=resume_after + 1)
    resumed, resumed_watch = run(tmp_path / "parts", ckpt_path=tmp_path / "parts" / f"e{resume_after}.ckpt")
    assert {e: lr for e, lr in whole_watch.lr.items() if e > resume_after} == pytest.approx(resumed_watch.lr)
    assert all(torch.equal(a, b) for a, b in zip(whole.student.state_dict().values(),
                                                 resumed.student.state_dict().values()))


# ----------------------------------------------------------------------------- bad input
def test_route_folder_without_manifest(tmp_path):
    (tmp_path / "route").mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest route.json.*RouteRecorder"):
        RouteConstrainedTeacher(str(tmp_path / "route"))


def test_no_route_next_to_teacher_ckpt(tmp_path):
    files = random_route(tmp_path / "route", 2)
    (tmp_path / "elsewhere").mkdir()
    teacher_ckpt = tmp_path / "elsewhere" / "teacher.pt"
    teacher_ckpt.write_bytes(files[0].read_bytes())
    fit = trainer(tmp_path, 2, [RouteConstrainedTeacher()])
    with pytest.raises(FileNotFoundError, match="elsewhere/route.* has no manifest"):
        fit.fit(kd_student(teacher_ckpt), digits())
    assert fit.global_step == 0


def test_manifest_naming_a_missing_anchor(tmp_path):
    files = random_route(tmp_path / "route", 3)
    files[1].unlink()
    with pytest.raises(FileNotFoundError, match="epoch0001.pt"):
        RouteConstrainedTeacher(str(tmp_path / "route"))


@pytest.mark.parametrize("schedule, message", [
    ([0.5, 0.25], "strictly increasing"), ([0.5, 1.0], "below 1"), ([0, 0.5], r"fractions of the run in \(0, 1\]"),
    ([0.5], "2 points for the 3 anchors"), ("fastest", "must be one of"),
])
def test_bad_schedule_in_init(tmp_path, schedule, message):
    random_route(tmp_path / "route", 3)
    with pytest.raises(ValueError, match=message):
        RouteConstrainedTeacher(str(tmp_path / "route"), schedule=schedule)


def test_switch_points_too_close_for_the_run(tmp_path):
    files = random_route(tmp_path / "route", 3)
    fit = trainer(tmp_path, 3, [RouteConstrainedTeacher(str(tmp_path / "route"), schedule=[0.3, 0.4])])
    with pytest.raises(ValueError, match=r"fall on epochs \[1, 1\] of a 3-epoch run"):  # round(0.9), round(1.2)
        fit.fit(kd_student(files[-1]), digits())
    assert fit.global_step == 0


def test_anchor_of_another_architecture(tmp_path):
    files = random_route(tmp_path / "route", 2, spec="helpers.nets.tiny_mlp")
    teacher_ckpt = tmp_path / "teacher.pt"
    torch.save(build_network(TEACHER, 10, 1).state_dict(), teacher_ckpt)
    fit = trainer(tmp_path, 2, [RouteConstrainedTeacher(str(tmp_path / "route"))])
    with pytest.raises(ValueError, match=r"RCO route anchor .*epoch0000\.pt.* another architecture"):
        fit.fit(kd_student(teacher_ckpt), digits())
    assert fit.global_step == 0 and files


class NoHoldOut(DigitsDataModule):
    hold_out_of_train = None


def test_route_needs_a_teacher_greedy_a_hold_out_and_per_anchor_a_relative_schedule(tmp_path):
    random_route(tmp_path / "route", 2)
    with pytest.raises(TypeError, match="has no teacher"):
        trainer(tmp_path, 2, [RouteConstrainedTeacher(str(tmp_path / "route"))]).fit(supervised(), digits())
    greedy = RouteConstrainedTeacher(str(tmp_path / "route"), schedule="greedy")
    with pytest.raises(ValueError, match="NoHoldOut has no hold_out_of_train"):
        trainer(tmp_path, 2, [greedy]).fit(kd_student(tmp_path / "route/epoch0000.pt"), NoHoldOut())
    model = kd_student(tmp_path / "route/epoch0000.pt")
    model.lr_scheduler_factory = partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1])
    with pytest.raises(ValueError, match=r"\['MultiStepLR'\] keeps absolute epochs"):
        trainer(tmp_path, 2, [RouteConstrainedTeacher(str(tmp_path / "route"))]).fit(model, digits())
    for bad, message in (({"probe_size": 0}, "probe_size must be a positive integer"),
                         ({"lr_schedule": "restart"}, "lr_schedule must be one of")):
        with pytest.raises(ValueError, match=message):
            RouteConstrainedTeacher(str(tmp_path / "route"), **bad)


# ----------------------------------------------------------------------------- DDP
def ddp_run(out: Path, phase: str) -> None:
    """Record a route with 2 processes, or distill greedily along it; each rank saves what it saw."""
    pl.seed_everything(0)
    if phase == "record":
        recorder = RouteRecorder(num_anchors=2, at_milestones=False, dirpath=out / "route")
        fit = trainer(out, 2, [recorder], devices=2, strategy="ddp")
        fit.fit(supervised(), digits())
        torch.save({"entries": recorder.entries}, out / f"record_rank{fit.global_rank}.pt")
        return
    files = [out / "route" / anchor_filename(e) for e in range(2)]
    rco = RouteConstrainedTeacher(str(out / "route"), schedule="greedy", probe_size=64)
    watch = TeacherWatch(rco, files)
    model = kd_student(files[-1], teacher=STUDENT)
    fit = trainer(out, 2, [rco, watch], devices=2, strategy="ddp")
    fit.fit(model, digits())
    torch.save({"anchors": watch.anchors, "exact": watch.exact, "divergences": rco.divergences,
                "held_out": rco._probe[0], "teacher": model.teacher.state_dict()},
               out / f"distill_rank{fit.global_rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_record_one_route_and_walk_it_together(tmp_path):
    for phase in ("record", "distill"):
        subprocess.run([sys.executable, __file__, str(tmp_path), phase], check=True, cwd=tmp_path, timeout=300)
    record = [torch.load(tmp_path / f"record_rank{r}.pt", weights_only=False) for r in (0, 1)]
    manifest = json.loads((tmp_path / "route" / MANIFEST).read_text())
    assert record[0]["entries"] == record[1]["entries"] == manifest and len(manifest) == 2
    rank0, rank1 = (torch.load(tmp_path / f"distill_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert torch.equal(rank0["held_out"], rank1["held_out"])  # every rank holds out the same images...
    assert rank0["divergences"].keys() == {1}  # 2 anchors over 2 epochs: one greedy step, after epoch 0
    assert rank0["divergences"] == rank1["divergences"]  # ...and they agree on the divergences
    assert rank0["anchors"] == rank1["anchors"] and all(rank0["exact"].values()) and all(rank1["exact"].values())
    assert all(torch.equal(v, rank1["teacher"][k]) for k, v in rank0["teacher"].items())


if __name__ == "__main__":
    helpers.run_ddp_script(ddp_run, Path(sys.argv[1]), sys.argv[2])
