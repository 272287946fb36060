"""FitNet, AT and FSP: losses vs independent formulas, gradients, FSP's two stages, bad input."""
import logging
import math

import pytest
import pytorch_lightning as pl
import torch

from helpers import trainer
from lightning_kd.batch import Batch
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.losses import at_loss, fitnet_loss, fsp_loss, fsp_matrix
from lightning_kd.methods import AT, FSP, FitNet

DIGITS = dict(num_classes=10, input_shape=(1, 8, 8))
TEACHER = {"name": "small_cnn", "width": 16}  # the architecture of the digits_teacher fixture


def block_mean(f, size):
    """Average non-overlapping blocks down to ``size`` (only for integer ratios): an
    independent route to the average pooling the losses do."""
    n, c, h, w = f.shape
    kh, kw = h // size[0], w // size[1]
    return f.reshape(n, c, size[0], kh, size[1], kw).mean(dim=(3, 5))


def attention_by_loops(f, p):
    n, c, h, w = f.shape
    out = torch.zeros(n, h * w, dtype=torch.float64)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                out[i, y * w + x] = sum(float(f[i, k, y, x]) ** p for k in range(c)) / c
        out[i] /= math.sqrt(float((out[i] ** 2).sum()))
    return out


@pytest.mark.parametrize("s_shape, t_shape", [
    ((2, 3, 4, 4), (2, 5, 4, 4)),   # channels differ
    ((3, 2, 8, 8), (3, 4, 4, 4)),   # student larger: pooled 2x2
    ((1, 4, 2, 6), (1, 3, 4, 12)),  # teacher larger, non-square
])
@pytest.mark.parametrize("p", [2, 3])
def test_at_loss_matches_loops(s_shape, t_shape, p):
    torch.manual_seed(0)
    s, t = torch.randn(s_shape), torch.randn(t_shape)
    size = (min(s_shape[2], t_shape[2]), min(s_shape[3], t_shape[3]))
    a_s = attention_by_loops(block_mean(s, size), p)
    a_t = attention_by_loops(block_mean(t, size), p)
    expected = ((a_s - a_t) ** 2).sum() / a_s.numel()
    assert at_loss(s, t, p) == pytest.approx(float(expected), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("c", [0.01, 3.7, 250.0])
def test_at_loss_unchanged_when_a_map_is_scaled(c):
    torch.manual_seed(1)
    s, t = torch.randn(4, 6, 8, 8), torch.randn(4, 12, 4, 4)
    reference = at_loss(s, t)
    assert reference > 0
    assert at_loss(c * s, t) == pytest.approx(float(reference), rel=1e-4)
    assert at_loss(s, c * t) == pytest.approx(float(reference), rel=1e-4)


@pytest.mark.parametrize("first_shape, second_shape", [
    ((2, 3, 4, 4), (2, 5, 4, 4)),
    ((3, 4, 8, 8), (3, 6, 4, 4)),   # first larger: pooled to 4x4
    ((1, 2, 3, 5), (1, 3, 6, 10)),  # second larger, non-square
])
def test_fsp_matrix_matches_einsum(first_shape, second_shape):
    torch.manual_seed(2)
    a, b = torch.randn(first_shape), torch.randn(second_shape)
    size = (min(first_shape[2], second_shape[2]), min(first_shape[3], second_shape[3]))
    expected = torch.einsum("nihw,njhw->nij", block_mean(a, size), block_mean(b, size)) / (size[0] * size[1])
    result = fsp_matrix(a, b)
    assert result.shape == (first_shape[0], first_shape[1], second_shape[1])
    torch.testing.assert_close(result, expected)


def test_fsp_loss_is_the_sum_of_mean_squared_differences():
    torch.manual_seed(3)
    shapes = [(2, 3, 5), (2, 5, 7), (2, 7, 1)]
    s = [torch.randn(shape) for shape in shapes]
    t = [torch.randn(shape) for shape in shapes]
    expected = 0.0
    for sm, tm in zip(s, t):
        expected += sum(float(v) ** 2 for v in (sm - tm).flatten()) / sm.numel()
    assert fsp_loss(s, t) == pytest.approx(expected, rel=1e-5)
    assert fsp_loss(s, s) == 0
    with pytest.raises(ValueError, match="2 student and 3 teacher"):
        fsp_loss(s[:2], t)


@pytest.mark.parametrize("shape", [(2, 3), (4, 8, 3, 3)])
def test_fitnet_loss_is_mse(shape):
    torch.manual_seed(4)
    a, b = torch.randn(shape), torch.randn(shape)
    expected = sum(float(x - y) ** 2 for x, y in zip(a.flatten(), b.flatten())) / a.numel()
    assert fitnet_loss(a, b) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        fitnet_loss(a, b[:1])


def make(cls, teacher_ckpt, student_width=4, **kwargs):
    return cls(student={"name": "small_cnn", "width": student_width}, teacher=TEACHER,
               teacher_ckpt=teacher_ckpt, **DIGITS, **kwargs)


@pytest.mark.parametrize("cls, extra, student_width", [
    (FitNet, {}, 4),
    (FitNet, {"student_layer": "layer1", "teacher_layer": "layer3"}, 4),  # 8x8 -> 2x2 hint
    (AT, {}, 4),
    (FSP, {}, 16),
])
def test_gradients_reach_student_and_regressor_never_teacher(cls, extra, student_width, digits_teacher):
    torch.manual_seed(5)
    model = make(cls, digits_teacher, student_width, **extra)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    losses = model.distill_losses(model.student_forward(x), model.teacher(x), Batch(x, y))
    distill = [name for name in losses if name != "ce"]
    assert len(distill) == 1 and losses[distill[0]] > 0
    losses[distill[0]].backward()  # the feature term alone
    assert model.student.stem[0].weight.grad.abs().sum() > 0
    if cls is FitNet:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.regressor.parameters())
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.net.parameters())


def test_fitnet_regressor_maps_student_to_teacher_shape(digits_teacher):
    model = make(FitNet, digits_teacher, student_layer="layer1", teacher_layer="layer3")
    out = model.regressor(torch.randn(3, 4, 8, 8))  # student layer1: width 4 at 8x8
    assert out.shape == (3, 64, 2, 2)  # teacher layer3: 4 * 16 channels at 2x2
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(id(p) in trainable for p in model.regressor.parameters())


@pytest.mark.parametrize("student_size, teacher_size, conv, kernel, stride", [
    (8, 8, torch.nn.Conv2d, (1, 1), (1, 1)),           # equal sizes: 1x1
    (8, 4, torch.nn.Conv2d, (3, 3), (2, 2)),           # twice as large: 3x3, stride 2
    (4, 8, torch.nn.ConvTranspose2d, (4, 4), (2, 2)),  # half as large: 4x4 transposed, stride 2
    (8, 2, torch.nn.Conv2d, (7, 7), (1, 1)),           # larger by 6: kernel 7
])
def test_fitnet_regressor_is_the_papers_size_matching_conv_with_bias_bn_and_relu(student_size, teacher_size, conv,
                                                                                 kernel, stride):
    from lightning_kd.adapters import hint_regressor

    s, t = torch.randn(2, 4, student_size, student_size), torch.randn(2, 16, teacher_size, teacher_size)
    regressor = hint_regressor(s, t)
    first, bn, relu = regressor
    assert type(first) is conv and first.kernel_size == kernel and first.stride == stride and first.bias is not None
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.num_features == 16 and isinstance(relu, torch.nn.ReLU)
    out = regressor(s)
    assert out.shape == t.shape and bool((out >= 0).all())  # compared with a post-ReLU hint


def test_fitnet_regressor_refuses_a_smaller_student_map_of_another_ratio():
    from lightning_kd.adapters import hint_regressor

    with pytest.raises(ValueError, match="the student's hint map is 2x2 and the teacher's 8x8"):
        hint_regressor(torch.randn(1, 4, 2, 2), torch.randn(1, 16, 8, 8))


def test_sizing_forward_leaves_batchnorm_statistics_alone(digits_teacher):
    model = make(FitNet, digits_teacher)
    bn = model.student.stem[1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean)) and bn.num_batches_tracked == 0
    assert model.student.training


class Recorder(pl.Callback):
    """Per epoch: the loss names the method returned, teacher forwards, logged stage, weights."""

    def __init__(self, model):
        self.terms, self.stages, self.teacher_calls, self.snapshots = {}, {}, {}, []
        model.teacher.net.register_forward_hook(self.count_teacher)
        original = model.distill_losses

        def spy(student, teacher, batch):
            losses = original(student, teacher, batch)
            self.terms.setdefault(model.current_epoch, set()).update(losses)
            return losses
        model.distill_losses = spy
        self.model = model

    def count_teacher(self, *args):
        if self.model.training:
            epoch = self.model.current_epoch
            self.teacher_calls[epoch] = self.teacher_calls.get(epoch, 0) + 1

    def snapshot(self, model):
        self.snapshots.append({k: v.detach().clone() for k, v in model.student.state_dict().items()})

    def on_train_start(self, trainer, model):
        self.snapshot(model)

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        self.stages.setdefault(trainer.current_epoch, set()).add(float(trainer.callback_metrics["train/stage"]))

    def on_train_epoch_end(self, trainer, model):
        self.snapshot(model)


def test_fsp_switches_stage_at_the_configured_epoch(digits_teacher, tmp_path, caplog):
    pl.seed_everything(0)
    model = make(FSP, digits_teacher, 16, stage1_fraction=0.5)  # 1 of 2 epochs
    recorder = Recorder(model)
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, max_epochs=2, callbacks=[recorder]).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert recorder.terms == {0: {"fsp"}, 1: {"ce"}}
    assert recorder.stages == {0: {1.0}, 1: {2.0}}
    assert recorder.teacher_calls == {0: 2}  # stage 2 does not run the teacher
    assert "stage 2 (cross-entropy only) starts" in caplog.text
    start, after_stage1, after_stage2 = recorder.snapshots
    changed = {k for k in start if not torch.equal(start[k], after_stage1[k])}
    assert "stem.0.weight" in changed and "layer3.0.weight" in changed
    assert "fc.weight" not in changed and "fc.bias" not in changed  # stage 1 trains features only
    assert not torch.equal(after_stage1["fc.weight"], after_stage2["fc.weight"])


def test_fitnet_hints_first_trains_the_guided_layers_on_the_hint_then_the_student_with_kd(digits_teacher, tmp_path,
                                                                                          caplog):
    pl.seed_everything(0)
    model = make(FitNet, digits_teacher, stages="hints_first", stage1_fraction=0.5, hint_weight=3.0,
                 ce_weight=0.7, kd_weight=2.0, temperature=3.0)  # stage 1: 1 of 2 epochs
    recorder = Recorder(model)
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, max_epochs=2, callbacks=[recorder]).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert recorder.terms == {0: {"hint"}, 1: {"ce", "kd"}}
    assert recorder.stages == {0: {1.0}, 1: {2.0}}
    assert "stage 2 (KD) starts" in caplog.text
    start, after_stage1, after_stage2 = recorder.snapshots
    changed = {k for k in start if not torch.equal(start[k], after_stage1[k])}
    assert {"stem.0.weight", "layer1.0.weight", "layer2.0.weight"} <= changed  # up to the guided layer
    assert not {"layer3.0.weight", "fc.weight", "fc.bias"} & changed  # above it: no gradient in stage 1
    assert not torch.equal(after_stage1["fc.weight"], after_stage2["fc.weight"])
    # Stage 2's loss by hand: 0.7 CE + 2 KL(T=3) x T^2, no hint.
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    model.eval()
    s, t = model.student_forward(x), model.teacher(x)
    losses = model.distill_losses(s, t, Batch(x, y))
    log_p, q = (s.logits / 3).log_softmax(1), (t.logits / 3).softmax(1)
    kl = (q * (q.log() - log_p)).sum(1).mean() * 9
    total = sum(model.loss_weights[name] * value for name, value in losses.items())
    assert total.item() == pytest.approx(0.7 * torch.nn.functional.cross_entropy(s.logits, y).item() + 2 * kl.item(),
                                         rel=1e-5)


def test_fitnet_joint_is_one_stage_of_ce_plus_hint(digits_teacher, tmp_path):
    pl.seed_everything(0)
    model = make(FitNet, digits_teacher, stages="joint")
    recorder = Recorder(model)
    trainer(tmp_path, max_epochs=2, callbacks=[recorder]).fit(model, datamodule=DigitsDataModule(batch_size=16))
    assert recorder.terms == {0: {"ce", "hint"}, 1: {"ce", "hint"}}
    assert recorder.stages == {0: {2.0}, 1: {2.0}}
    assert model.loss_weights == {"ce": 1.0, "hint": 100.0}


def test_fitnet_unknown_stages_and_empty_stages_are_refused(digits_teacher):
    with pytest.raises(ValueError, match="stages must be 'hints_first' .* or 'joint'"):
        make(FitNet, digits_teacher, stages="two")
    for fraction in (0.0, 1.0):  # no stage 1, or no stage 2
        with pytest.raises(ValueError, match=r"hints_first: stage1_fraction .* must be in \(0, 1\)"):
            make(FitNet, digits_teacher, stages="hints_first", stage1_fraction=fraction)


def test_fsp_channel_mismatch_names_layers_and_counts(digits_teacher):
    with pytest.raises(ValueError) as info:
        make(FSP, digits_teacher, 4)
    message = str(info.value)
    assert "'stem' -> 'layer1'" in message and "4 -> 4 channels" in message and "16 -> 16" in message


@pytest.mark.parametrize("cls", [AT, FSP])
def test_layer_lists_of_different_lengths_are_refused(cls, digits_teacher):
    with pytest.raises(ValueError, match="2 student_layers .* 3 teacher_layers"):
        make(cls, digits_teacher, 16, student_layers=["layer1", "layer2"],
             teacher_layers=["layer1", "layer2", "layer3"])


def test_fitnet_unknown_hint_layer_is_refused(digits_teacher):
    with pytest.raises(ValueError, match="unknown layer name 'layer9'.*closest valid names"):
        make(FitNet, digits_teacher, teacher_layer="layer9")


def test_non_spatial_feature_layer_is_refused(digits_teacher):
    with pytest.raises(ValueError, match="student layer 'pool' outputs shape \\(2, 16\\)"):
        make(AT, digits_teacher, student_layers=["pool"], teacher_layers=["layer3"])


@pytest.mark.parametrize("balance", [None, 1.0, 0.1])
def test_balance_caps_each_distillation_term_at_a_multiple_of_the_ce_term(balance, digits_teacher):
    torch.manual_seed(6)
    model = make(FitNet, digits_teacher, stages="joint", hint_weight=100.0, ce_weight=0.5, balance=balance)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    losses = model.distill_losses(model.student_forward(x), model.teacher(x), Batch(x, y))
    ce, hint = losses["ce"].item(), losses["hint"].item()
    assert 100 * hint > 0.5 * ce  # the hint is the larger term here, so a bound of 1x or 0.1x CE cuts it
    scales = model.balance_scales(losses)
    total = model.weighted_total(losses, 6, scales=scales)
    bound = float("inf") if balance is None else balance * 0.5 * ce
    expected_hint = min(100 * hint, bound)  # by hand: the weighted hint, capped at balance x the weighted CE
    assert total.item() == pytest.approx(0.5 * ce + expected_hint, rel=1e-5)
    assert model.loss_terms["hint"].item() == pytest.approx(hint)  # logged unscaled
    # The cap is a detached factor: the hint's gradient is the unbalanced one times that factor.
    total.backward(retain_graph=True)
    grad = model.regressor[1].weight.grad.clone()  # the regressor (its BatchNorm scale) only sees the hint
    model.zero_grad()
    (100 * losses["hint"]).backward()
    assert torch.allclose(grad, model.regressor[1].weight.grad * expected_hint / (100 * hint), rtol=1e-4, atol=1e-9)


def test_balance_must_be_positive(digits_teacher):
    with pytest.raises(ValueError, match="balance .* must be > 0"):
        make(FitNet, digits_teacher, balance=0.0)
