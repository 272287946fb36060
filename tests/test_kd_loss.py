"""kd_loss against the Hinton formula computed independently (float64, explicit sums)."""
import math

import pytest
import torch

from lightning_kd.losses import kd_loss


def reference_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> float:
    """sum_i p_t,i (log p_t,i - log p_s,i), averaged over the batch, times T^2 -- by hand."""
    total = 0.0
    for s_row, t_row in zip(s.double().tolist(), t.double().tolist()):
        zs = [v / T for v in s_row]
        zt = [v / T for v in t_row]
        log_norm_s = math.log(sum(math.exp(v) for v in zs))
        log_norm_t = math.log(sum(math.exp(v) for v in zt))
        for a, b in zip(zs, zt):
            log_ps, log_pt = a - log_norm_s, b - log_norm_t
            total += math.exp(log_pt) * (log_pt - log_ps)
    return total / len(s) * T * T


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("batch,classes", [(1, 2), (7, 10), (32, 100)])
def test_kd_loss_matches_formula(T, batch, classes):
    gen = torch.Generator().manual_seed(batch * 1000 + classes)
    s = torch.randn(batch, classes, generator=gen) * 3
    t = torch.randn(batch, classes, generator=gen) * 3
    assert kd_loss(s, t, T).item() == pytest.approx(reference_kd(s, t, T), rel=1e-5, abs=1e-7 * T * T)


def test_kd_loss_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(16, 10)
    assert kd_loss(logits, logits.clone()).abs().item() < 1e-6
    assert kd_loss(logits, torch.randn(16, 10)).item() > 0


def test_kd_loss_gradient_flows_to_student_only():
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(8, 5, requires_grad=True)
    kd_loss(s, t.detach(), 4.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # d/ds of KL * T^2 = T * (softmax(s/T) - softmax(t/T)) / batch
    expected = 4.0 * (torch.softmax(s / 4, 1) - torch.softmax(t / 4, 1)) / 8
    assert torch.allclose(s.grad, expected.detach(), atol=1e-6)


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_kd_loss_rejects_non_positive_temperature(T):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), T)
