"""The speed options on a GPU: bf16-mixed with a bfloat16 teacher, channels_last and torch.compile.

Skipped (with the reason) where no CUDA GPU is visible; a session with a GPU runs them with
``python -m pytest tests/test_gpu.py``. The CPU-side behaviour of the same options is tested in
test_speed_options.py.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from helpers import requires_cuda, save_teacher, snapshot, trainer
from lightning_kd.datamodules import SyntheticDataModule
from lightning_kd.methods import AT, KD, FitNet

STUDENT, TEACHER = "resnet8x4", "resnet32x4"
SHAPE = (3, 32, 32)


def data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=10, input_shape=SHAPE, train_size=256, val_size=64, test_size=64,
                               batch_size=64)


def gpu_trainer(tmp_path, **kwargs) -> pl.Trainer:
    return trainer(tmp_path, **{"accelerator": "gpu", "limit_train_batches": 4, **kwargs})


class StepProbe(pl.Callback):
    """What the training step saw: the teacher's and student's dtypes, the input's memory format, and
    whether every 3x3 convolution weight of both networks is on the GPU in channels_last (read during the
    fit: Lightning moves the module back to the CPU when the fit ends)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = pl_module.unpack(batch)[0]
        convs = [m.weight for net in (pl_module.student, pl_module.teacher.net) for m in net.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.weight.shape[2] > 1]
        self.convs_channels_last = bool(convs) and all(
            w.is_cuda and w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        self.seen.append((next(pl_module.teacher.net.parameters()).dtype, next(pl_module.student.parameters()).dtype,
                          x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)))


@requires_cuda
def test_bf16_mixed_runs_a_bfloat16_teacher_and_restores_it_exactly(tmp_path):
    teacher_ckpt = save_teacher(tmp_path / "teacher.pt", TEACHER, 10, 3)
    model = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE)
    before = snapshot(model.teacher.net)
    probe = StepProbe()
    fit = gpu_trainer(tmp_path, precision="bf16-mixed", callbacks=[probe])
    fit.fit(model, datamodule=data())
    assert {(t, s) for t, s, _ in probe.seen} == {(torch.bfloat16, torch.float32)}
    assert torch.isfinite(fit.callback_metrics["train/loss"])
    after = model.teacher.net.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k].cpu(), v) for k, v in before.items())


@requires_cuda
def test_channels_last_inputs_and_networks_on_the_gpu(tmp_path):
    teacher_ckpt = save_teacher(tmp_path / "teacher.pt", TEACHER, 10, 3)
    model = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE, channels_last=True)
    probe = StepProbe()
    gpu_trainer(tmp_path, precision="bf16-mixed", callbacks=[probe]).fit(model, datamodule=data())
    assert all(channels_last for *_, channels_last in probe.seen)
    assert probe.convs_channels_last


@requires_cuda
def test_compiled_networks_train_keep_their_hooks_and_checkpoint_keys(tmp_path):
    teacher_ckpt = save_teacher(tmp_path / "teacher.pt", TEACHER, 10, 3)
    model = FitNet(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE, compile=True,
                   stages="joint")
    keys = set(model.state_dict())
    before = snapshot(model.student)
    fit = gpu_trainer(tmp_path, precision="bf16-mixed")
    fit.fit(model, datamodule=data())
    assert torch.isfinite(fit.callback_metrics["train/hint"]) and float(fit.callback_metrics["train/hint"]) > 0
    assert set(model.state_dict()) == keys  # in-place compile: no `_orig_mod.` prefixes
    assert any(not torch.equal(v, model.student.state_dict()[k].cpu()) for k, v in before.items())


@requires_cuda
def test_a_compiled_fit_after_another_in_the_same_process_runs_its_own_hooks(tmp_path):
    # The GPU bench's order: AT's watched layers compiled first, then FitNet's (the results tool and
    # the bench fit many configs in one process). Each fit must record its own layers.
    teacher_ckpt = save_teacher(tmp_path / "teacher.pt", TEACHER, 10, 3)
    for method, term in [(AT, "at"), (FitNet, "hint")]:
        extra = {"stages": "joint"} if method is FitNet else {}  # both terms from the first step
        model = method(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE, compile=True,
                       **extra)
        fit = gpu_trainer(tmp_path / term, precision="bf16-mixed")
        fit.fit(model, datamodule=data())
        assert torch.isfinite(fit.callback_metrics[f"train/{term}"]) and float(fit.callback_metrics[f"train/{term}"]) > 0
