"""Deep Mutual Learning: the KL term, the alternation schedule, checkpoints, export and DDP.

Also a script: ``python tests/test_dml.py OUT_DIR PEERS`` runs a 2-process CPU DDP fit (gloo);
each rank saves its batches and peers under OUT_DIR, and the slow tests compare them.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback

from helpers import DIGITS_SHAPE as SHAPE, run_ddp_script, trainer
from helpers.nets import tiny_mlp
from lightning_kd.callbacks import MutualAlternation
from lightning_kd.datamodules import DigitsDataModule, SyntheticDataModule
from lightning_kd.losses import dml_loss
from lightning_kd.methods import DML, Supervised
from lightning_kd.models import build_network

NARROW, WIDE = {"name": "small_cnn", "width": 4}, {"name": "small_cnn", "width": 6}


def make_dml(peers, cls=DML, lr=0.1, **kwargs):
    return cls(peers=peers, num_classes=10, input_shape=SHAPE,
               optimizer=partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=5e-4), **kwargs)


def quick_trainer(tmp_path, **kwargs):
    return trainer(tmp_path, **{"limit_train_batches": 3, **kwargs})


def digits():
    return DigitsDataModule(batch_size=16)


def reference_kl(logits, peer_logits):
    """KL(p_peer || p) = sum p_peer * (log p_peer - log p), batch mean, in float64."""
    p = torch.softmax(logits.double(), 1)
    q = torch.softmax(peer_logits.double(), 1)
    return (q * (q.log() - p.log())).sum(1).mean()


# ----------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("shape", [(1, 2), (4, 10), (32, 100), (7, 3)])
def test_dml_loss_matches_formula(shape):
    torch.manual_seed(shape[0])
    logits, peer = torch.randn(shape) * 3, torch.randn(shape) * 3
    assert torch.allclose(dml_loss(logits, peer).double(), reference_kl(logits, peer), atol=1e-5)
    assert dml_loss(logits, logits).abs() < 1e-6


def test_dml_loss_does_not_train_the_peer():
    logits, peer = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    dml_loss(logits, peer).backward()
    assert peer.grad is None
    # d/dz KL(q || softmax(z)) = (softmax(z) - q) / N
    expected = (torch.softmax(logits, 1) - torch.softmax(peer, 1)) / 5
    assert torch.allclose(logits.grad, expected.detach(), atol=1e-6)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("peers", [[NARROW], [], NARROW, "small_cnn"])
def test_fewer_than_two_peers_is_an_error(peers):
    with pytest.raises(ValueError, match="two or more peers"):
        make_dml(peers)


def test_student_or_teacher_arguments_are_errors(digits_teacher):
    with pytest.raises(ValueError, match="not `student`"):
        make_dml([NARROW, WIDE], student=NARROW)
    with pytest.raises(TypeError, match="unexpected keyword argument 'teacher'"):
        make_dml([NARROW, WIDE], teacher=WIDE, teacher_ckpt=digits_teacher)


@pytest.mark.parametrize("kwargs, match", [({"mode": "batch"}, "mode must be one of"),
                                           ({"mode": "every_k", "k": 0}, "positive integer"),
                                           ({"mode": "epoch", "k": 3}, "only used by mode='every_k'")])
def test_alternation_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MutualAlternation(**kwargs)


def test_alternation_needs_peers(tmp_path):
    model = Supervised(student=NARROW, num_classes=10, input_shape=SHAPE)
    with pytest.raises(TypeError, match="has no `peers`"):
        quick_trainer(tmp_path, callbacks=[MutualAlternation()]).fit(model, datamodule=digits())


# ----------------------------------------------------------------------------- alternation
class ChangedPeers(Callback):
    """Records, per training batch, which peers' state (parameters and buffers) changed."""

    def __init__(self):
        self.changed = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = [copy.deepcopy(p.state_dict()) for p in pl_module.peers]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed.append(tuple(
            i for i, (peer, old) in enumerate(zip(pl_module.peers, self.before))
            if any(not torch.equal(v, old[k]) for k, v in peer.state_dict().items())))


@pytest.mark.parametrize("alternation, epochs, expected", [
    (None, 1, [(0, 1, 2)] * 3),
    (MutualAlternation("step"), 1, [(0, 1, 2)] * 3),
    (MutualAlternation("every_k", k=2), 3, [(0,), (0,), (1,), (1,), (2,), (2,), (0,), (0,), (1,)]),
    (MutualAlternation("epoch"), 4, [(0,)] * 3 + [(1,)] * 3 + [(2,)] * 3 + [(0,)] * 3),
])
def test_a_peer_changes_only_on_its_turn(tmp_path, alternation, epochs, expected):
    pl.seed_everything(0)
    model = make_dml([NARROW, NARROW, WIDE])
    recorder = ChangedPeers()
    callbacks = [recorder] + ([alternation] if alternation else [])
    quick_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks).fit(model, datamodule=digits())
    assert recorder.changed == expected


class RecordingDML(DML):
    """DML that records what each peer's loss saw."""

    def on_fit_start(self):
        self.seen = []

    def peer_losses(self, i, output, others, batch):
        self.seen.append((i, output.logits.detach().clone(), {j: v.logits.clone() for j, v in others.items()},
                          batch[0].clone()))
        return super().peer_losses(i, output, others, batch)


def test_step_mode_second_peer_learns_from_refreshed_first_peer(tmp_path):
    pl.seed_everything(0)
    model = make_dml([NARROW, WIDE], cls=RecordingDML, lr=0.5)
    quick_trainer(tmp_path, limit_train_batches=1).fit(model, datamodule=digits())
    (i0, logits0, seen_by_0, x), (i1, logits1, seen_by_1, x1) = model.seen
    assert (i0, i1) == (0, 1) and torch.equal(x, x1)
    # Peer 0 learnt from peer 1 before either stepped: peer 1's own pre-step logits.
    assert torch.equal(seen_by_0[1], logits1)
    # Peer 1 learnt from peer 0 after peer 0's step: recompute with peer 0's final weights.
    refreshed = copy.deepcopy(model.peers[0]).train()(x).detach()
    assert torch.allclose(seen_by_1[0], refreshed, atol=1e-5)
    assert not torch.allclose(seen_by_1[0], logits0, atol=1e-3), "peer 0 did not move"


# ----------------------------------------------------------------------------- checkpoints
def fit_every_k(tmp_path, epochs, ckpt_path=None, seed=0):
    pl.seed_everything(seed)
    model = make_dml([NARROW, WIDE], lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = quick_trainer(tmp_path, max_epochs=epochs, callbacks=[MutualAlternation("every_k", k=2)])
    trainer.fit(model, datamodule=digits(), ckpt_path=ckpt_path)
    return model, trainer


def test_checkpoint_round_trip_restores_peers_optimizers_and_turn(tmp_path):
    full, full_trainer = fit_every_k(tmp_path, epochs=2)
    half, half_trainer = fit_every_k(tmp_path, epochs=1)
    path = tmp_path / "half.ckpt"
    half_trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    peer_keys = [{f"student.{k}" for k in half.student.state_dict()},
                 {f"other_peers.0.{k}" for k in half.other_peers[0].state_dict()}]
    assert set(ckpt["state_dict"]) == peer_keys[0] | peer_keys[1], "each peer once, nothing else"
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2

    # Restoring alone: a different initialisation gets every peer and optimizer back.
    restored, restored_trainer = fit_every_k(tmp_path, epochs=1, ckpt_path=path, seed=1)
    for k, v in half.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]), k
    assert restored.student is restored.peers[0] and len(restored.peers) == 2
    for a, b in zip(half_trainer.optimizers, restored_trainer.optimizers):
        for p, q in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
            assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
        assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"] == 0.05

    # Resuming: the turn (3 batches seen, k=2 -> peer 1 first) and the weights match an
    # uninterrupted run exactly.
    resumed, _ = fit_every_k(tmp_path, epochs=2, ckpt_path=path, seed=1)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k

    loaded = DML.load_from_checkpoint(path)
    for k, v in half.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_export_peer_loads_into_a_fresh_network(tmp_path):
    pl.seed_everything(0)
    model = make_dml([NARROW, WIDE])
    quick_trainer(tmp_path).fit(model, datamodule=digits())
    model.eval()
    x = torch.randn(4, *SHAPE)
    for i, spec in enumerate([NARROW, WIDE]):
        model.export_peer(i, tmp_path / f"peer{i}.pt")
        fresh = build_network(spec, 10, 1)
        fresh.load_state_dict(torch.load(tmp_path / f"peer{i}.pt", weights_only=True))
        assert torch.equal(fresh.eval()(x), model.peers[i](x))
    with pytest.raises(IndexError, match="2 peers"):
        model.export_peer(2, tmp_path / "nope.pt")


def test_each_peer_is_evaluated(tmp_path):
    pl.seed_everything(0)
    model = make_dml([NARROW, WIDE])
    trainer = quick_trainer(tmp_path, limit_val_batches=2)
    trainer.fit(model, datamodule=digits())
    metrics = trainer.callback_metrics
    for name in ["val/acc", "val/peer0/acc", "val/peer1/acc", "train/peer0/ce", "train/peer0/kl",
                 "train/peer1/ce", "train/peer1/kl", "train/loss"]:
        assert name in metrics, name
    assert metrics["val/acc"] == metrics["val/peer0/acc"]
    # The logged loss is CE + KL, weights 1.
    assert torch.isclose(metrics["train/peer1/loss"], metrics["train/peer1/ce"] + metrics["train/peer1/kl"])


# ----------------------------------------------------------------------------- DDP
class SavingDML(DML):
    """Each rank saves its initial peers, the batches it trained on and its final peers."""

    out_dir = Path(".")

    def on_train_start(self):
        self.initial = copy.deepcopy([p.state_dict() for p in self.peers])
        self.batches = []

    def training_step(self, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))
        return super().training_step(batch, batch_idx)

    def on_train_end(self):
        torch.save({"initial": self.initial, "final": [p.state_dict() for p in self.peers],
                    "batches": self.batches}, self.out_dir / f"rank{self.global_rank}.pt")


DDP_PEERS = {"mlp": ["helpers.nets.tiny_mlp", "helpers.nets.tiny_mlp"], "cnn": [NARROW, WIDE]}


def ddp_run(out_dir: Path, peers: str) -> None:
    pl.seed_everything(0)
    SavingDML.out_dir = out_dir
    model = make_dml(DDP_PEERS[peers], cls=SavingDML)
    data = SyntheticDataModule(num_classes=10, input_shape=SHAPE, train_size=64, val_size=16, test_size=16,
                               batch_size=8, pad=0)
    trainer = quick_trainer(out_dir, devices=2, strategy="ddp")
    trainer.fit(model, datamodule=data)


def run_ddp(tmp_path, peers):
    subprocess.run([sys.executable, __file__, str(tmp_path), peers], check=True, cwd=tmp_path, timeout=300)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def assert_same_peers(a, b):
    for peer_a, peer_b in zip(a, b):
        for k, v in peer_a.items():
            assert torch.equal(v, peer_b[k]), k


def reference_global_batch_run(initial, batches0, batches1, lr=0.1):
    """The paper's Algorithm 1 in plain PyTorch, one process, on the concatenated batches."""
    peers = [tiny_mlp() for _ in initial]
    for peer, state in zip(peers, initial):
        peer.load_state_dict(state)
    opts = [torch.optim.SGD(p.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4) for p in peers]
    for (x0, y0), (x1, y1) in zip(batches0, batches1):
        x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
        logits = [p(x) for p in peers]
        for i, (peer, opt) in enumerate(zip(peers, opts)):
            others = [logits[j].detach() for j in range(len(peers)) if j != i]
            loss = F.cross_entropy(logits[i], y) + torch.stack([reference_kl(logits[i], o) for o in others]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                logits[i] = peer(x)
    return [p.state_dict() for p in peers]


@pytest.mark.slow
def test_ddp_peers_match_a_single_process_run_on_the_global_batch(tmp_path):
    rank0, rank1 = run_ddp(tmp_path, "mlp")
    assert_same_peers(rank0["initial"], rank1["initial"])
    assert len(rank0["batches"]) == 3
    assert not torch.equal(rank0["batches"][0][0], rank1["batches"][0][0]), "ranks saw the same data"
    assert_same_peers(rank0["final"], rank1["final"])
    expected = reference_global_batch_run(rank0["initial"], rank0["batches"], rank1["batches"])
    for got, want in zip(rank0["final"], expected):
        for k, v in want.items():
            assert torch.allclose(got[k], v.float(), atol=1e-5), k
    moved = [not torch.equal(a[k], b[k]) for a, b in zip(rank0["initial"], rank0["final"]) for k in a]
    assert all(moved)


@pytest.mark.slow
def test_ddp_batchnorm_peers_stay_identical_across_ranks(tmp_path):
    rank0, rank1 = run_ddp(tmp_path, "cnn")
    assert_same_peers(rank0["final"], rank1["final"])  # parameters and running statistics
    stats = [k for k in rank0["final"][0] if k.endswith("running_mean")]
    assert stats and all(not torch.equal(rank0["initial"][0][k], rank0["final"][0][k]) for k in stats)


if __name__ == "__main__":
    run_ddp_script(ddp_run, Path(sys.argv[1]), sys.argv[2])
