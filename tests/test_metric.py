"""Metric learning: Recall@K by hand, the triplet loss vs loops, the class split, the embedding
net, and short real fits of MetricLearning / MetricRKD on the embedded digits."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import save_teacher, trainer as quick_trainer
from lightning_kd.batch import Batch
from lightning_kd.datamodules import ClassSplitDataModule, DigitsDataModule
from lightning_kd.datamodules.base import normalize
from lightning_kd.losses import batch_hard_triplet_loss, rkd_angle_loss, rkd_distance_loss
from lightning_kd.methods import MetricLearning, MetricRKD
from lightning_kd.metrics import RecallAtK, recall_at_k
from lightning_kd.models.embedding import EmbeddingNet

EMB = "lightning_kd.models.embedding.EmbeddingNet"
STUDENT = {"name": EMB, "backbone": {"name": "small_cnn", "width": 4}, "embedding_dim": 8}
TEACHER = {"name": EMB, "backbone": {"name": "small_cnn", "width": 8}, "embedding_dim": 16}
DIGITS = dict(num_classes=5, input_shape=(1, 8, 8))


def test_recall_at_k_by_hand():
    # Points on a line with labels:  x: 0(a) 1(b) 3(a) 7(b) 8(c)
    # nearest others of each query, in order:
    #   0(a): 1(b), 3(a), 7(b), 8(c)   -> first hit at rank 2
    #   1(b): 0(a), 3(a), 7(b), 8(c)   -> rank 3
    #   3(a): 1(b), 0(a), 7(b), 8(c)   -> rank 2
    #   7(b): 8(c), 3(a), 1(b), 0(a)   -> rank 3
    #   8(c): no other c              -> never
    # Recall@1 = 0/5, @2 = 2/5, @4 = 4/5, @8 (all others) = 4/5.
    e = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    labels = torch.tensor([0, 1, 0, 1, 2])
    assert recall_at_k(e, labels, (1, 2, 4, 8)) == {1: 0.0, 2: 0.4, 4: 0.8, 8: 0.8}
    # Two tight clusters: every nearest neighbour is of the query's class.
    e = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 5.1]])
    assert recall_at_k(e, torch.tensor([3, 3, 7, 7]), (1,)) == {1: 1.0}


def test_recall_at_k_never_retrieves_the_query_itself():
    e = torch.randn(6, 4)
    assert recall_at_k(e, torch.arange(6), (1, 4)) == {1: 0.0, 4: 0.0}  # every label unique


def test_recall_at_k_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        recall_at_k(torch.randn(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(N,\) labels"):
        recall_at_k(torch.randn(4, 3), torch.tensor([0, 1]))


def test_recall_metric_equals_torchmetrics_hit_rate_with_every_sample_a_query():
    """torchmetrics' RetrievalHitRate@k scores a query 1 when one of its k best documents is relevant; with
    every other sample a document (score: minus the distance) and relevance = same class, that is Recall@K."""
    from torchmetrics.retrieval import RetrievalHitRate

    torch.manual_seed(0)
    e, y = torch.randn(40, 5), torch.randint(0, 4, (40,))
    metric = RecallAtK((1, 2, 4, 8, 64))
    for rows in torch.tensor_split(torch.arange(40), [7, 25]):  # uneven batches, as a split's last one
        metric.update(e[rows], y[rows])
    ours = metric.compute()
    query, doc = torch.cartesian_prod(torch.arange(40), torch.arange(40)).T
    others = query != doc
    query, doc = query[others], doc[others]
    scores = -torch.cdist(e, e)[query, doc]
    for k in (1, 2, 4, 8, 64):  # 64 > the 39 other samples: every one counts
        reference = RetrievalHitRate(top_k=k)(scores, y[doc] == y[query], indexes=query)
        assert ours[k] == pytest.approx(float(reference), abs=1e-6), k


def test_recall_metric_gathers_every_process_in_rank_order():
    """Under DDP the retrieval set is every process's samples: a fake all-gather hands this process rank 1's
    rows; compute then equals recall_at_k over rank 0's rows followed by rank 1's."""
    torch.manual_seed(1)
    e, y = torch.randn(30, 3), torch.randint(0, 3, (30,))
    mine, theirs = slice(0, 16), slice(16, 30)

    def gather(tensor, group=None):  # what torch.distributed would return on rank 0 of 2
        return [tensor, e[theirs] if tensor.ndim == 2 else y[theirs]]

    metric = RecallAtK((1, 4), dist_sync_fn=gather, distributed_available_fn=lambda: True)
    metric.update(e[mine], y[mine])
    assert metric.compute() == recall_at_k(e, y, (1, 4)) != recall_at_k(e[mine], y[mine], (1, 4))


def triplet_by_loops(e, y, margin):
    terms = []
    for a in range(len(y)):
        pos = [math.dist(e[a].tolist(), e[p].tolist()) for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [math.dist(e[a].tolist(), e[n].tolist()) for n in range(len(y)) if y[n] != y[a]]
        if pos and neg:
            terms.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("n, d, classes", [(6, 3, 2), (12, 5, 4), (9, 2, 3)])
@pytest.mark.parametrize("margin", [0.0, 0.2, 1.5])
def test_batch_hard_triplet_matches_loops(n, d, classes, margin):
    torch.manual_seed(n + d)
    e, y = torch.randn(n, d), torch.randint(0, classes, (n,))
    y[0] = y[1]  # at least one positive pair
    y[2] = (y[0] + 1) % classes
    assert batch_hard_triplet_loss(e, y, margin) == pytest.approx(triplet_by_loops(e, y, margin), rel=1e-5, abs=1e-6)


def test_batch_hard_triplet_without_positives_is_zero_with_gradient():
    e = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet_loss(e, torch.arange(4))
    loss.backward()
    assert loss == 0 and torch.equal(e.grad, torch.zeros_like(e))


# ----------------------------------------------------------------------------- data and network
def test_class_split_keeps_disjoint_classes_and_relabels():
    source = DigitsDataModule()
    data = ClassSplitDataModule(source, train_classes=[7, 2, 4], test_classes=[0, 9])
    data.setup("fit")
    full = source.load_splits()
    (x_train, y_train), (x_val, y_val) = data.splits["train"], data.splits["val"]
    assert data.num_classes == 3 and data.input_shape == (1, 8, 8)
    assert set(y_train.tolist()) == {0, 1, 2} and set(y_val.tolist()) == {0, 1}
    # class 7 -> 0, 2 -> 1, 4 -> 2; counts and images match the source's
    for new, old in enumerate([7, 2, 4]):
        torch.testing.assert_close(x_train[y_train == new], full["train"][0][full["train"][1] == old])
    for new, old in enumerate([0, 9]):
        torch.testing.assert_close(x_val[y_val == new], full["test"][0][full["test"][1] == old])


@pytest.mark.parametrize("train, test, match", [
    ([0, 1, 2], [2, 3], "share \\[2\\]"),
    ([0, 1], [5, 10], "not classes of DigitsDataModule"),
    ([0], [5, 6], "at least 2 distinct"),
])
def test_class_split_rejects_bad_classes(train, test, match):
    with pytest.raises(ValueError, match=match):
        ClassSplitDataModule(DigitsDataModule(), train_classes=train, test_classes=test)


def test_embedding_net_embeds_and_classifies():
    torch.manual_seed(0)
    net = EmbeddingNet(num_classes=5, in_channels=1, backbone={"name": "small_cnn", "width": 4}, embedding_dim=8)
    x = torch.randn(3, 1, 8, 8)
    e = net.embed(x)
    assert e.shape == (3, 8)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(net(x), net.fc(e))
    raw = EmbeddingNet(5, 1, {"name": "small_cnn", "width": 4}, 8, normalize=False)
    raw.load_state_dict(net.state_dict())
    torch.testing.assert_close(torch.nn.functional.normalize(raw.embed(x), dim=1), e)
    with pytest.raises(ValueError, match="Linear `fc`"):
        EmbeddingNet(5, 3, "torchvision.models.vgg11")


# ----------------------------------------------------------------------------- methods
@pytest.fixture
def embedding_teacher(tmp_path) -> str:
    return save_teacher(tmp_path / "embedding_teacher.pt", TEACHER, 5, 1)


def digit_split(batch_size=32):
    return ClassSplitDataModule(DigitsDataModule(), batch_size=batch_size)


def test_metric_rkd_losses_are_the_pure_losses_on_the_embeddings(embedding_teacher):
    model = MetricRKD(student=STUDENT, teacher=TEACHER, teacher_ckpt=embedding_teacher, triplet_weight=0.5, **DIGITS)
    assert model.loss_weights == {"rkd_distance": 1.0, "rkd_angle": 2.0, "triplet": 0.5}
    model.eval()  # BatchNorm on running stats: the two forward passes below are equal
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    losses = model.distill_losses(model.student_forward(x), model.teacher(x), Batch(x, y))
    s_emb, t_emb = model.student.embed(x), model.teacher.net.embed(x)  # by the networks themselves
    torch.testing.assert_close(losses["rkd_distance"], rkd_distance_loss(s_emb, t_emb))
    torch.testing.assert_close(losses["rkd_angle"], rkd_angle_loss(s_emb, t_emb))
    torch.testing.assert_close(losses["triplet"], batch_hard_triplet_loss(s_emb, y, 0.2))
    sum(model.loss_weights[k] * v for k, v in losses.items()).backward()
    assert model.student.embedding[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.net.parameters())
    assert not model.student.fc.weight.requires_grad  # the unused classifier is frozen


@pytest.mark.parametrize("kwargs, match", [
    (dict(distance_weight=0.0, angle_weight=0.0), "not all 0"),
    (dict(student="helpers.nets.tiny_mlp"), "TinyMLP has neither `embedding` nor `pool`"),
])
def test_metric_rkd_bad_settings_are_errors(embedding_teacher, kwargs, match):
    options = dict(student=STUDENT, teacher=TEACHER, teacher_ckpt=embedding_teacher, **DIGITS)
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MetricRKD(**options)


def test_metric_rkd_refuses_a_batch_of_2_before_training(embedding_teacher, tmp_path):
    model = MetricRKD(student=STUDENT, teacher=TEACHER, teacher_ckpt=embedding_teacher, **DIGITS)
    with pytest.raises(ValueError, match="at least 3 samples"):
        quick_trainer(tmp_path).fit(model, datamodule=digit_split(batch_size=2))


def test_rkd_student_reports_recall_on_unseen_digits(embedding_teacher, tmp_path):
    model = MetricRKD(student=STUDENT, teacher=TEACHER, teacher_ckpt=embedding_teacher, **DIGITS)
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    data = digit_split()
    trainer = quick_trainer(tmp_path, limit_train_batches=4, limit_val_batches=None)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    for k in (1, 2, 4, 8):
        assert 0.0 <= float(metrics[f"val/recall@{k}"]) <= 1.0
    assert [float(metrics[f"val/recall@{k}"]) for k in (1, 2, 4, 8)] == sorted(
        float(metrics[f"val/recall@{k}"]) for k in (1, 2, 4, 8))  # Recall@K grows with K
    # The logged value is recall_at_k over the whole retrieval set (digits 5-9 of the test split).
    x, y = data.splits["val"]
    model.eval()
    with torch.no_grad():
        e = model.student.embed(normalize(x, data.mean, data.std))
    assert float(metrics["val/recall@1"]) == pytest.approx(recall_at_k(e, y, (1,))[1], abs=1e-6)
    assert "teacher/recall@1" in metrics
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())


@pytest.mark.slow
def test_a_trained_baseline_retrieves_unseen_digits_above_chance(tmp_path):
    """Chance Recall@1 on 5 balanced classes is about 0.2; 3 short epochs of triplet training
    get well above it on digits never seen in training."""
    torch.manual_seed(0)
    model = MetricLearning(student=STUDENT, **DIGITS)
    trainer = quick_trainer(tmp_path, max_epochs=3, limit_train_batches=None, limit_val_batches=None)
    trainer.fit(model, datamodule=digit_split())
    assert float(trainer.callback_metrics["val/recall@1"]) > 0.5


def test_metric_learning_on_any_zoo_network_uses_its_pool():
    model = MetricLearning(student={"name": "small_cnn", "width": 4}, **DIGITS)
    x = torch.randn(5, 1, 8, 8)
    model.eval()
    expected = model.student.pool(model.student.layer3(model.student.layer2(model.student.layer1(
        model.student.stem(x)))))
    torch.testing.assert_close(model.student_forward(x).features[model.student_layer].flatten(1), expected)
