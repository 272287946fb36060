"""Speed options of DistillationModule: teacher-output cache, bf16 teacher, channels_last (on CPU; the
GPU runs of bf16, channels_last and compile are in test_gpu.py)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import helpers
from helpers import save_teacher
from lightning_kd.datamodules import SyntheticDataModule
from lightning_kd.methods import KD, FitNet, Supervised

STUDENT, TEACHER = {"name": "small_cnn", "width": 4}, {"name": "small_cnn", "width": 8}
SHAPE = (1, 8, 8)


def data(**kwargs) -> SyntheticDataModule:
    # 64 training images in batches of 16: no remainder is dropped, so epoch 1 fills the cache.
    args = dict(num_classes=10, input_shape=SHAPE, train_size=64, val_size=16, test_size=16,
                batch_size=16, pad=0, flip=False, return_index=True)
    return SyntheticDataModule(**{**args, **kwargs})


def trainer(**kwargs) -> pl.Trainer:
    return helpers.trainer(**{"limit_train_batches": None, **kwargs})


class RecordingKD(KD):
    """KD that keeps every training (input, teacher logits) pair and counts live teacher forwards."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen, self.live_calls = [], {}
        forward = self.teacher.net.forward

        def counted(x):
            if self.training:
                self.live_calls[self.current_epoch] = self.live_calls.get(self.current_epoch, 0) + 1
            return forward(x)

        self.teacher.net.forward = counted  # not a hook: the cache refuses teachers with watched layers

    def distill_losses(self, student, teacher, batch):
        self.seen.append((self.current_epoch, batch[0].clone(), teacher.logits.clone()))
        return super().distill_losses(student, teacher, batch)


@pytest.fixture
def teacher_ckpt(tmp_path) -> str:
    return save_teacher(tmp_path / "teacher.pt", TEACHER, 10, 1)


def test_datamodule_yields_sample_indices():
    dm = data()
    dm.setup("fit")
    x, y, index = next(iter(dm.train_dataloader()))
    images, labels = dm.splits["train"]
    assert torch.equal(x, images[index]) and torch.equal(y, labels[index])
    assert len(next(iter(dm.val_dataloader()))) == 2  # evaluation batches carry no index


def test_cached_teacher_logits_equal_live_ones(teacher_ckpt):
    torch.manual_seed(0)
    model = RecordingKD(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE,
                        cache_teacher_outputs=True)
    trainer(max_epochs=3, limit_val_batches=0).fit(model, data())
    # Epoch 0 computes all 64 samples live (4 batches); epochs 1 and 2 never run the teacher.
    assert model.live_calls.get(0) == 4 and model.live_calls.get(1, 0) == 0 and model.live_calls.get(2, 0) == 0
    cached = [(x, t) for epoch, x, t in model.seen if epoch > 0]
    assert len(cached) == 8
    with torch.no_grad():
        for x, t in cached:  # the teacher is frozen and in eval mode: live logits are the cached ones
            torch.testing.assert_close(t, model.teacher.net(x))


def test_cache_refuses_augmented_or_unindexed_data_and_hooked_teachers(teacher_ckpt):
    kd = dict(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE,
              cache_teacher_outputs=True)
    with pytest.raises(ValueError, match="pad=2"):
        trainer(max_steps=1).fit(KD(**kd), data(pad=2))
    with pytest.raises(ValueError, match="flip=True"):
        trainer(max_steps=1).fit(KD(**kd), data(flip=True))
    with pytest.raises(ValueError, match="return_index: true"):
        trainer(max_steps=1).fit(KD(**kd), data(return_index=False))
    with pytest.raises(ValueError, match="hooks"):
        trainer(max_steps=1).fit(FitNet(student_layer="layer1", teacher_layer="layer1", **kd), data())
    with pytest.raises(TypeError, match="cache_teacher_outputs"):  # a method without a teacher has no such option
        Supervised(student=STUDENT, input_shape=SHAPE, cache_teacher_outputs=True)


class DtypeProbe(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.probe = (next(pl_module.teacher.net.parameters()).dtype,
                           next(pl_module.student.parameters()).dtype)


@pytest.mark.parametrize("precision, teacher_dtype, student_dtype", [
    ("bf16-mixed", torch.bfloat16, torch.float32),  # teacher cast, student trained in fp32 under autocast
    ("bf16-true", torch.bfloat16, torch.bfloat16),  # the "true" precisions feed inputs of their dtype
    ("64-true", torch.float64, torch.float64)])
def test_teacher_weights_take_the_precision_during_fit_and_exact_originals_after(teacher_ckpt, precision,
                                                                                  teacher_dtype, student_dtype):
    model = KD(student=STUDENT, teacher=TEACHER, teacher_ckpt=teacher_ckpt, input_shape=SHAPE)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    fit = trainer(max_steps=2, limit_val_batches=1, precision=precision, callbacks=[DtypeProbe()])
    fit.fit(model, data(return_index=False))
    assert model.probe == (teacher_dtype, student_dtype)
    assert torch.isfinite(fit.callback_metrics["train/loss"])
    after = model.teacher.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_channels_last_networks_and_inputs(tmp_path):
    torch.manual_seed(0)
    shape = (3, 8, 8)  # with one channel both memory formats coincide
    ckpt = save_teacher(tmp_path / "teacher3.pt", TEACHER, 10, 3)
    model = RecordingKD(student=STUDENT, teacher=TEACHER, teacher_ckpt=ckpt, input_shape=shape,
                        channels_last=True)
    trainer(max_steps=1, limit_val_batches=0).fit(model, data(input_shape=shape))
    x = model.seen[0][1]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    convs = [m.weight for m in [*model.student.modules(), *model.teacher.net.modules()]
             if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                         for w in convs)


@pytest.mark.parametrize("name", ["fsp_matrix", "pairwise_distances", "triplet_cosines"])
def test_gram_based_relations_compute_in_float32_under_bf16_autocast(name):
    from lightning_kd import losses

    fn = getattr(losses, name)
    torch.manual_seed(0)
    # Nearly equal embeddings: their distances come from differences of nearly equal Gram entries.
    base = torch.randn(1, 16) * 10
    x = base + 1e-2 * torch.randn(6, 16)
    args = (x[None, :, :, None].repeat(2, 1, 1, 3), x[None, :, :, None].flip(1).repeat(2, 1, 1, 3)) \
        if name == "fsp_matrix" else (x,)
    rounded = [a.bfloat16().float() for a in args]  # inputs as a bf16 network hands them over
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fn(*rounded)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, fn(*rounded), rtol=1e-6, atol=1e-6)  # as without autocast


def test_compile_covers_every_dml_peer():
    from lightning_kd.methods import DML

    model = DML(peers=[STUDENT, STUDENT, STUDENT], input_shape=SHAPE, compile=True)
    assert not any(getattr(p, "_compiled_call_impl", None) for p in model.peers)
    trainer(max_steps=0).fit(model, datamodule=data())  # setup runs; compiling itself is lazy, at the first call
    assert all(getattr(p, "_compiled_call_impl", None) is not None for p in model.peers)
