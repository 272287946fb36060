"""RKD: losses vs loops over pairs and triplets, invariances, gradients, bad input, DDP parity.

Also a script: ``python tests/test_rkd.py OUT_DIR`` runs a 2-process CPU DDP fit (gloo) with
``global_relations``; each rank saves its batches, losses and student under OUT_DIR.
"""
from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from helpers import run_ddp_script, trainer as quick_trainer
from helpers.nets import TinyMLP
from lightning_kd.batch import Batch
from lightning_kd.datamodules import DigitsDataModule, SyntheticDataModule
from lightning_kd.losses import rkd_angle_loss, rkd_distance_loss
from lightning_kd.methods import RKD

DIGITS = dict(num_classes=10, input_shape=(1, 8, 8))
TEACHER = {"name": "small_cnn", "width": 16}  # the architecture of the digits_teacher fixture


def huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def distance_loss_by_loops(s, t):
    pairs = [(i, j) for i in range(len(s)) for j in range(len(s)) if i != j]

    def normalized(e):
        d = {(i, j): math.dist(e[i].tolist(), e[j].tolist()) for i, j in pairs}
        mu = sum(d.values()) / len(d)
        return {p: v / mu for p, v in d.items()}

    ds, dt = normalized(s), normalized(t)
    return sum(huber(ds[p], dt[p]) for p in pairs) / len(pairs)


def angle_loss_by_loops(s, t):
    def cosine(e, i, j, k):  # angle at e_j between e_i and e_k
        u, v = (e[i] - e[j]).double(), (e[k] - e[j]).double()
        return float(u @ v / (u.norm() * v.norm()))

    triplets = list(itertools.permutations(range(len(s)), 3))
    return sum(huber(cosine(s, *tr), cosine(t, *tr)) for tr in triplets) / len(triplets)


def distance_loss_authors(s, t):
    """The authors' procedure, written out: the full N x N distance matrix (0 on the diagonal), each
    divided by the mean of its positive entries, Huber averaged over all N^2 entries."""
    n = len(s)

    def matrix(e):
        d = [[math.dist(e[i].tolist(), e[j].tolist()) for j in range(n)] for i in range(n)]
        positive = [v for row in d for v in row if v > 0]
        mu = sum(positive) / len(positive)
        return [[v / mu for v in row] for row in d]

    ds, dt = matrix(s), matrix(t)
    return sum(huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n ** 2


def angle_loss_authors(s, t):
    """All N^3 (i, j, k): the cosine of unit(e_i - e_j) and unit(e_k - e_j), a zero difference being the
    zero vector (so degenerate triplets give 0 or 1 on both sides); Huber averaged over N^3."""
    n = len(s)

    def cosine(e, i, j, k):
        u, v = (e[i] - e[j]).double(), (e[k] - e[j]).double()
        u = u / u.norm() if u.norm() > 0 else u
        v = v / v.norm() if v.norm() > 0 else v
        return float(u @ v)

    return sum(huber(cosine(s, i, j, k), cosine(t, i, j, k))
               for i in range(n) for j in range(n) for k in range(n)) / n ** 3


SHAPES = [(3, 2, 5), (5, 8, 4), (9, 16, 32)]  # (N, D_student, D_teacher)


@pytest.mark.parametrize("n, d_s, d_t", SHAPES)
@pytest.mark.parametrize("spread", [1.0, 0.05])  # 0.05: distances partly below 1, both Huber branches
def test_losses_match_loops(n, d_s, d_t, spread):
    torch.manual_seed(n)
    s, t = torch.randn(n, d_s), torch.randn(n, d_t)
    s = s.mean(0) + spread * (s - s.mean(0)) * torch.rand(n, 1) * 4
    assert rkd_distance_loss(s, t, "distinct") == pytest.approx(distance_loss_by_loops(s, t), rel=1e-4, abs=1e-7)
    assert rkd_angle_loss(s, t, "distinct") == pytest.approx(angle_loss_by_loops(s, t), rel=1e-4, abs=1e-7)
    assert rkd_distance_loss(s, t) == pytest.approx(distance_loss_authors(s, t), rel=1e-4, abs=1e-7)
    assert rkd_angle_loss(s, t) == pytest.approx(angle_loss_authors(s, t), rel=1e-4, abs=1e-7)


def test_distance_loss_by_hand():
    # 1-D points. Student 0, 1, 11: distances 1, 10, 11 (mean 22/3) -> 3/22, 30/22, 33/22.
    # Teacher 0, 10, 11: distances 10, 1, 11 -> 30/22, 3/22, 33/22. Differences 27/22, 27/22, 0:
    # Huber's linear branch, 27/22 - 1/2 = 16/22 twice, 0 once; mean 16/33.
    s, t = torch.tensor([[0.0], [1.0], [11.0]]), torch.tensor([[0.0], [10.0], [11.0]])
    assert rkd_distance_loss(s, t, normalizer="distinct") == pytest.approx(16 / 33, rel=1e-5)
    assert distance_loss_by_loops(s, t) == pytest.approx(16 / 33)
    # The authors' normalizer: the same 4 * 16/22 over all 9 entries of the 3x3 matrix (diagonal 0).
    assert rkd_distance_loss(s, t) == pytest.approx(4 * 16 / 22 / 9, rel=1e-5)


@pytest.mark.parametrize("c", [1e-3, 0.5, 7.0, 1e3])
def test_distance_loss_is_scale_invariant(c):
    torch.manual_seed(1)
    s, t = torch.randn(8, 6), torch.randn(8, 12)
    reference = rkd_distance_loss(s, t)
    assert reference > 0
    assert rkd_distance_loss(c * s, t) == pytest.approx(float(reference), rel=1e-4)


def test_both_losses_are_zero_when_student_equals_teacher():
    torch.manual_seed(2)
    e = torch.randn(7, 10)
    assert float(rkd_distance_loss(e, e)) == pytest.approx(0.0, abs=1e-7)
    assert float(rkd_angle_loss(e, e)) == pytest.approx(0.0, abs=1e-7)
    assert rkd_angle_loss(e, torch.randn(7, 10)) > 0


def test_gradients_reach_the_student_not_the_teacher():
    torch.manual_seed(3)
    s, t = torch.randn(6, 4, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    (rkd_distance_loss(s, t) + rkd_angle_loss(s, t)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None


def test_equal_student_embeddings_give_finite_gradients():
    s = torch.zeros(4, 3, requires_grad=True)  # e.g. a dead ReLU student at initialisation
    (rkd_distance_loss(s, torch.randn(4, 3)) + rkd_angle_loss(s, torch.randn(4, 3))).backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("loss, n, match", [
    (rkd_angle_loss, 2, "at least 3 samples"),
    (rkd_distance_loss, 1, "at least 2 samples"),
])
def test_too_small_a_batch_is_an_error(loss, n, match):
    with pytest.raises(ValueError, match=match):
        loss(torch.randn(n, 4), torch.randn(n, 4))


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="same samples"):
        rkd_distance_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(N, D\) embeddings"):
        rkd_angle_loss(torch.randn(4, 3, 2), torch.randn(4, 3))


# ----------------------------------------------------------------------------- the module
def make_rkd(teacher_ckpt, **kwargs):
    options = dict(student={"name": "small_cnn", "width": 4}, teacher=TEACHER, teacher_ckpt=teacher_ckpt, **DIGITS)
    options.update(kwargs)
    return RKD(**options)


def test_module_losses_are_the_weighted_pure_losses_on_the_pool_embeddings(digits_teacher):
    model = make_rkd(digits_teacher)
    assert model.loss_weights == {"ce": 1.0, "rkd_distance": 25.0, "rkd_angle": 50.0}
    torch.manual_seed(4)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    student = model.student_forward(x)
    losses = model.distill_losses(student, model.teacher(x), Batch(x, y))
    logits = student.logits
    s_emb = model.student.pool(model.student.layer3(model.student.layer2(model.student.layer1(model.student.stem(x)))))
    with torch.no_grad():
        t = model.teacher.net
        t_emb = t.pool(t.layer3(t.layer2(t.layer1(t.stem(x)))))
    assert s_emb.shape == (6, 16) and t_emb.shape == (6, 64)
    torch.testing.assert_close(losses["rkd_distance"], rkd_distance_loss(s_emb, t_emb))
    torch.testing.assert_close(losses["rkd_angle"], rkd_angle_loss(s_emb, t_emb))
    torch.testing.assert_close(losses["ce"], F.cross_entropy(logits, y))
    total = sum(model.loss_weights[k] * v for k, v in losses.items())
    total.backward()
    assert model.student.stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.net.parameters())


def test_a_zero_weight_leaves_its_term_out(digits_teacher):
    model = make_rkd(digits_teacher, angle_weight=0.0)
    x = torch.randn(2, 1, 8, 8)
    losses = model.distill_losses(model.student_forward(x), model.teacher(x), Batch(x, torch.tensor([0, 1])))
    assert set(losses) == {"ce", "rkd_distance"}  # and a batch of 2 is fine without angles


@pytest.mark.parametrize("kwargs, match", [
    (dict(distance_weight=0.0, angle_weight=0.0), "not both 0"),
    (dict(angle_weight=-1.0), "angle_weight >= 0"),
    (dict(student_layer="pol"), "unknown layer name 'pol'"),
])
def test_bad_settings_are_errors_in_init(digits_teacher, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_rkd(digits_teacher, **kwargs)


def test_a_batch_smaller_than_3_is_refused_before_training(digits_teacher, tmp_path):
    model = make_rkd(digits_teacher)
    before = copy.deepcopy(model.student.state_dict())
    with pytest.raises(ValueError, match="at least 3 samples.*batch size is 2"):
        quick_trainer(tmp_path).fit(model, datamodule=DigitsDataModule(batch_size=2))
    assert all(torch.equal(v, model.student.state_dict()[k]) for k, v in before.items())


def test_a_short_fit_logs_each_term_and_trains_only_the_student(digits_teacher, tmp_path):
    model = make_rkd(digits_teacher)
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    student_before = copy.deepcopy(model.student.state_dict())
    fit = quick_trainer(tmp_path)
    fit.fit(model, datamodule=DigitsDataModule(batch_size=16))
    metrics = fit.callback_metrics
    expected = 1.0 * metrics["train/ce"] + 25.0 * metrics["train/rkd_distance"] + 50.0 * metrics["train/rkd_angle"]
    assert torch.isclose(metrics["train/loss"], expected)
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not torch.equal(student_before["stem.0.weight"], model.student.stem[0].weight)


def test_without_ddp_global_relations_change_nothing(digits_teacher):
    torch.manual_seed(5)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    local = make_rkd(digits_teacher)
    global_ = make_rkd(digits_teacher, global_relations=True)
    global_.student.load_state_dict(local.student.state_dict())
    a, b = (m.distill_losses(m.student_forward(x), m.teacher(x), Batch(x, y)) for m in (local, global_))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- DDP
# No BatchNorm: per-process batches then give exactly the activations of the global batch.
TINY_STUDENT, TINY_TEACHER = {"name": "helpers.nets.TinyMLP", "width": 6}, {"name": "helpers.nets.TinyMLP", "width": 12}


class SavingRKD(RKD):
    """Each rank saves its initial student, its batches, the losses it computed and its final student."""

    out_dir = Path(".")

    def on_train_start(self):
        self.initial = copy.deepcopy(self.student.state_dict())
        self.batches, self.losses = [], []

    def distill_losses(self, student, teacher, batch):
        self.batches.append((batch[0].clone(), batch[1].clone()))
        losses = super().distill_losses(student, teacher, batch)
        self.losses.append({k: v.detach().clone() for k, v in losses.items()})
        return losses

    def on_train_end(self):
        torch.save({"initial": self.initial, "final": self.student.state_dict(), "batches": self.batches,
                    "losses": self.losses}, self.out_dir / f"rank{self.global_rank}.pt")


LR = 0.1


def ddp_run(out_dir: Path) -> None:
    pl.seed_everything(0)
    teacher_path = out_dir / "teacher.pt"
    if not teacher_path.exists():  # the launcher re-runs this script for rank 1: keep rank 0's file
        torch.save(TinyMLP(width=12).state_dict(), teacher_path)
    SavingRKD.out_dir = out_dir
    model = SavingRKD(student=TINY_STUDENT, teacher=TINY_TEACHER,
                      teacher_ckpt=str(teacher_path), student_layer="body", teacher_layer="body",
                      global_relations=True, optimizer=partial(torch.optim.SGD, lr=LR, momentum=0.9), **DIGITS)
    data = SyntheticDataModule(num_classes=10, input_shape=(1, 8, 8), train_size=64, val_size=16, test_size=16,
                               batch_size=4, pad=0)
    quick_trainer(out_dir, devices=2, strategy="ddp", limit_train_batches=3).fit(model, datamodule=data)


def reference_global_batch_run(initial, teacher_state, batches0, batches1):
    """RKD in plain PyTorch, one process, on the concatenated batches; returns losses and weights."""
    student, teacher = TinyMLP(width=6), TinyMLP(width=12)
    student.load_state_dict(initial)
    teacher.load_state_dict(teacher_state)
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9)
    losses = []
    for (x0, y0), (x1, y1) in zip(batches0, batches1):
        x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
        s_emb = student.body(x)
        with torch.no_grad():
            t_emb = teacher.body(x)
        terms = {"ce": F.cross_entropy(student.fc(s_emb), y), "rkd_distance": rkd_distance_loss(s_emb, t_emb),
                 "rkd_angle": rkd_angle_loss(s_emb, t_emb)}
        losses.append({k: v.detach() for k, v in terms.items()})
        optimizer.zero_grad()
        (terms["ce"] + 25 * terms["rkd_distance"] + 50 * terms["rkd_angle"]).backward()
        optimizer.step()
    return losses, student.state_dict()


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("rkd_ddp")
    subprocess.run([sys.executable, __file__, str(out)], check=True, cwd=out, timeout=300)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    teacher = torch.load(out / "teacher.pt", weights_only=True)
    assert len(ranks[0]["batches"]) == 3
    assert not torch.equal(ranks[0]["batches"][0][0], ranks[1]["batches"][0][0]), "ranks saw the same data"
    return ranks, reference_global_batch_run(ranks[0]["initial"], teacher, ranks[0]["batches"], ranks[1]["batches"])


@pytest.mark.slow
def test_ddp_global_relations_equal_one_process_on_the_concatenated_batch(ddp_result):
    (rank0, rank1), (expected, _) = ddp_result
    for step, want in enumerate(expected):
        for name in ("rkd_distance", "rkd_angle"):
            # every process computes the relations of the global batch ...
            torch.testing.assert_close(rank0["losses"][step][name], want[name], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rank1["losses"][step][name], want[name], rtol=1e-5, atol=1e-6)
        # ... while CE stays per process: the global mean is the mean of the two halves
        torch.testing.assert_close((rank0["losses"][step]["ce"] + rank1["losses"][step]["ce"]) / 2, want["ce"])


@pytest.mark.slow
def test_ddp_student_weights_equal_one_process_on_the_global_batch(ddp_result):
    """No world-size factor on the loss: a wrong gradient scale would show here after 3 steps."""
    (rank0, rank1), (_, expected) = ddp_result
    for k, v in expected.items():
        assert torch.equal(rank0["final"][k], rank1["final"][k]), k
        torch.testing.assert_close(rank0["final"][k], v, rtol=1e-5, atol=1e-6)
        assert not torch.equal(rank0["initial"][k], v), f"{k} did not move"


if __name__ == "__main__":
    run_ddp_script(ddp_run, Path(sys.argv[1]))


def test_an_unknown_normalizer_is_refused_before_training():
    with pytest.raises(ValueError, match=r"rkd normalizer must be one of \('all_entries', 'distinct'\), got 'mean'"):
        rkd_distance_loss(torch.randn(4, 3), torch.randn(4, 3), normalizer="mean")
