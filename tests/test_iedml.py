"""IE-DML: per-peer losses against the formula, turns, the exploration sign, bad input, checkpoints, DDP.

Also a script: ``python tests/test_iedml.py OUT_DIR`` runs a 2-process CPU DDP fit (gloo); each
rank saves its state and batches under OUT_DIR, and the slow test compares them.
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
from pytorch_lightning.callbacks import Callback
from torch import nn

from helpers import DIGITS_SHAPE as SHAPE, run_ddp_script, ie_loss_by_hand as by_hand, trainer
from lightning_kd.batch import Batch
from lightning_kd.callbacks import MutualAlternation
from lightning_kd.datamodules import DigitsDataModule, SyntheticDataModule
from lightning_kd.losses import inheritance_loss
from lightning_kd.methods import IEDML
from lightning_kd.features import detached

NARROW, WIDE = {"name": "small_cnn", "width": 4}, {"name": "small_cnn", "width": 6}


def make_iedml(peers=None, seed=0, **kwargs) -> IEDML:
    torch.manual_seed(seed)
    return IEDML(peers=[NARROW, WIDE] if peers is None else peers, num_classes=10, input_shape=SHAPE,
                 optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4), **kwargs)


def quick_trainer(tmp_path, **kwargs):
    return trainer(tmp_path, **{"limit_train_batches": 3, **kwargs})


def digits():
    return DigitsDataModule(batch_size=16)


def layer3_by_hand(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A SmallCNN's layer3 feature, running its stages one by one (no hooks)."""
    return net.layer3(net.layer2(net.layer1(net.stem(x))))


def kl_by_hand(logits, peer_logits) -> float:
    p, q = torch.softmax(logits.double(), 1), torch.softmax(peer_logits.double(), 1)
    return float((q * (q.log() - p.log())).sum(1).mean())


def batch_of(n=8, seed=3):
    torch.manual_seed(seed)
    return torch.randn(n, *SHAPE), torch.randint(0, 10, (n,))


def peer_step_losses(model: IEDML, i: int, x, y):
    """What DML's training_step hands to peer_losses for peer i: every peer run on x."""
    outputs = {j: model.peer_forward(j, x) for j in range(len(model.peers))}
    others = {j: model.shared_output(j, detached(out)) for j, out in outputs.items() if j != i}
    return model.peer_losses(i, outputs[i], others, Batch(x, y))


# ----------------------------------------------------------------------------- the losses
@pytest.mark.parametrize("i", [0, 1])
def test_peer_losses_match_an_independent_computation(i):
    model = make_iedml().train()
    reference = copy.deepcopy(model)  # train-mode outputs depend on the batch only, not on statistics
    x, y = batch_of()
    losses = peer_step_losses(model, i, x, y)
    assert set(losses) == {"ce", "kl", "inh", "exp", "recon"}

    j = 1 - i
    with torch.no_grad():
        feats = [layer3_by_hand(p, x) for p in reference.peers]         # (8, 16, 2, 2) and (8, 24, 2, 2)
        logits = [p(x) for p in reference.peers]
        target = reference.autoencoders[j].encoder(feats[j])            # peer j's factor, batch statistics
        half = feats[i].shape[1] // 2
        inh = reference.inheritance_encoders[i][str(j)](feats[i][:, :half])
        exp = reference.exploration_encoders[i][str(j)](feats[i][:, half:])
        recon = reference.autoencoders[i](feats[i])
    assert target.shape == ((8, 8, 2, 2) if j == 0 else (8, 12, 2, 2))  # factor rate 0.5
    assert inh.shape == exp.shape == target.shape
    ce = -torch.log_softmax(logits[i].double(), 1)[torch.arange(8), y].mean()
    assert losses["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["kl"].item() == pytest.approx(kl_by_hand(logits[i], logits[j]), rel=1e-4)
    assert losses["inh"].item() == pytest.approx(by_hand(inh, target), rel=1e-4)
    assert losses["exp"].item() == pytest.approx(-by_hand(exp, target), rel=1e-4)
    assert losses["recon"].item() == pytest.approx((recon - feats[i]).abs().mean().item(), rel=1e-4)  # L1, the default


def test_gradients_stay_with_the_stepping_peer_and_reconstruction_stays_off_its_backbone():
    model = make_iedml().train()
    x, y = batch_of()
    losses = peer_step_losses(model, 0, x, y)
    losses["recon"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.peers[0].parameters()), "recon reached the backbone"
    assert all(p.grad is not None for p in model.autoencoders[0].parameters())
    (losses["inh"] + losses["exp"]).backward()
    assert model.peers[0].stem[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for m in (model.inheritance_encoders[0], model.exploration_encoders[0])
               for p in m.parameters())
    other = [model.peers[1], model.autoencoders[1], model.inheritance_encoders[1], model.exploration_encoders[1]]
    assert all(p.grad is None for m in other for p in m.parameters())


def test_targets_leave_the_other_peers_statistics_alone():
    model = make_iedml().train()
    before = copy.deepcopy(model.autoencoders[1].state_dict())
    x, y = batch_of()
    peer_step_losses(model, 0, x, y)
    assert all(torch.equal(v, model.autoencoders[1].state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("term, sign", [("exp", +1), ("inh", -1)])
def test_one_step_moves_the_factor_relative_to_the_other_peer(term, sign):
    """Only `term` weighted: one SGD step of peer 0 increases (exp) / decreases (inh) the
    distance of its factor to peer 1's factor on the same batch."""
    weights = {"ce_weight": 0.0, "kl_weight": 0.0, "inheritance_weight": 0.0, "exploration_weight": 0.0,
               "reconstruction_weight": 0.0, {"exp": "exploration_weight", "inh": "inheritance_weight"}[term]: 1.0}
    model = make_iedml(**weights).train()
    encoder = {"exp": model.exploration_encoders, "inh": model.inheritance_encoders}[term][0]["1"]
    x, y = batch_of(16)

    def distance() -> float:
        with torch.no_grad():
            feat = layer3_by_hand(model.peers[0], x)
            part = feat[:, 8:] if term == "exp" else feat[:, :8]
            target = model.autoencoders[1].encoder(layer3_by_hand(model.peers[1], x))
            return inheritance_loss(encoder(part), target).item()

    before = distance()
    other = [p.detach().clone() for m in model.peer_modules(1) for p in m.parameters()]
    losses = peer_step_losses(model, 0, x, y)
    total = sum(model.loss_weights[name] * value for name, value in losses.items())
    params = [p for m in model.peer_modules(0) for p in m.parameters()]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    with torch.no_grad():
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
        for p, g in zip(params, grads):
            if g is not None:
                p -= 0.05 / norm * g  # a small plain gradient step of fixed length
    after = distance()
    assert sign * (after - before) > 1e-4, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(other, (p for m in model.peer_modules(1) for p in m.parameters())))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("peers", [[NARROW], [], NARROW])
def test_fewer_than_two_peers_is_an_error(peers):
    with pytest.raises(ValueError, match="two or more peers"):
        make_iedml(peers=peers)


def test_unsplittable_layer_is_refused():
    with pytest.raises(ValueError, match=r"peer 1 layer 'layer1'.*5 channels.*even number"):
        make_iedml(peers=[NARROW, {"name": "small_cnn", "width": 5}], layers="layer1")
    make_iedml(peers=[NARROW, {"name": "small_cnn", "width": 5}], layers=["layer1", "layer2"])  # 4 and 10


def test_layers_must_name_one_layer_per_peer():
    with pytest.raises(ValueError, match="one layer per peer: got 3 names for 2 peers"):
        make_iedml(layers=["layer1", "layer2", "layer3"])
    with pytest.raises(ValueError, match="unknown layer name 'layer9'"):
        make_iedml(layers="layer9")


# ----------------------------------------------------------------------------- turns
class ChangedGroups(Callback):
    """Per training batch, which peers changed what they own: ``{peer: members changed}``, the
    members being its network, autoencoder, inheritance and exploration encoders (parameters
    or buffers)."""

    def __init__(self):
        self.changed = []

    def state(self, module):
        return [[copy.deepcopy(m.state_dict()) for m in module.peer_modules(i)] for i in range(len(module.peers))]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = self.state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        changed = {}
        for i, (old, new) in enumerate(zip(self.before, self.state(pl_module))):
            members = tuple(n for n, (a, b) in enumerate(zip(old, new))
                            if any(not torch.equal(v, b[k]) for k, v in a.items()))
            if members:
                changed[i] = members
        self.changed.append(changed)


@pytest.mark.parametrize("alternation, epochs, expected", [
    (MutualAlternation("every_k", k=2), 2, [(0,), (0,), (1,), (1,), (0,), (0,)]),
    (MutualAlternation("epoch"), 2, [(0,)] * 3 + [(1,)] * 3),
    (MutualAlternation("step"), 1, [(0, 1)] * 3),
])
def test_a_peer_and_its_heads_change_only_on_its_turn(tmp_path, alternation, epochs, expected):
    pl.seed_everything(0)
    model = make_iedml()
    recorder = ChangedGroups()
    trainer = quick_trainer(tmp_path, max_epochs=epochs, callbacks=[recorder, alternation])
    trainer.fit(model, datamodule=digits())
    assert recorder.changed == [{i: (0, 1, 2, 3) for i in turn} for turn in expected]
    last = expected[-1][-1]  # the peer that stepped last logged its terms last
    metrics = trainer.callback_metrics
    terms = ["ce", "kl", "inh", "exp", "recon"]
    weighted = sum(model.loss_weights[n] * metrics[f"train/peer{last}/{n}"] for n in terms)
    assert torch.isclose(metrics[f"train/peer{last}/loss"], weighted)


# ----------------------------------------------------------------------------- checkpoints
def fit_every_k(tmp_path, epochs, ckpt_path=None, seed=0):
    pl.seed_everything(seed)
    model = make_iedml(seed=seed, lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = quick_trainer(tmp_path, max_epochs=epochs, callbacks=[MutualAlternation("every_k", k=2)])
    trainer.fit(model, datamodule=digits(), ckpt_path=ckpt_path)
    return model, trainer


def test_checkpoint_round_trip_restores_peers_and_their_encoders(tmp_path):
    full, _ = fit_every_k(tmp_path, epochs=2)
    half, half_trainer = fit_every_k(tmp_path, epochs=1)
    path = tmp_path / "half.ckpt"
    half_trainer.save_checkpoint(path)
    keys = torch.load(path, weights_only=False)["state_dict"].keys()
    for prefix in ["student.", "other_peers.0.", "autoencoders.0.", "autoencoders.1.", "inheritance_encoders.0.1.",
                   "inheritance_encoders.1.0.", "exploration_encoders.0.1.", "exploration_encoders.1.0."]:
        assert any(k.startswith(prefix) for k in keys), prefix

    loaded = IEDML.load_from_checkpoint(path)
    assert loaded.layers == ["layer3", "layer3"]
    for k, v in half.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k

    # Resuming from a different initialisation continues exactly like the uninterrupted run.
    resumed, _ = fit_every_k(tmp_path, epochs=2, ckpt_path=path, seed=1)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


# ----------------------------------------------------------------------------- DDP
class RankSnapshots(Callback):
    """Each rank saves the module's state before and after fit and the batches it trained on."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.batches = out_dir, []

    def on_train_start(self, trainer, pl_module):
        self.initial = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].clone())

    def on_train_end(self, trainer, pl_module):
        torch.save({"initial": self.initial, "final": pl_module.state_dict(), "batches": self.batches},
                   self.out_dir / f"rank{trainer.global_rank}.pt")


def ddp_run(out_dir: Path) -> None:
    """A 2-process CPU fit (gloo), peers alternating every batch."""
    pl.seed_everything(0)
    data = SyntheticDataModule(num_classes=10, input_shape=SHAPE, train_size=64, val_size=16, test_size=16,
                               batch_size=8, pad=0)
    callbacks = [RankSnapshots(out_dir), MutualAlternation("every_k", k=1)]
    quick_trainer(out_dir, devices=2, strategy="ddp", limit_train_batches=4, callbacks=callbacks).fit(
        make_iedml(), datamodule=data)


@pytest.mark.slow
def test_ddp_ranks_hold_identical_peers_and_encoders(tmp_path):
    subprocess.run([sys.executable, __file__, str(tmp_path)], check=True, cwd=tmp_path, timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert len(rank0["batches"]) == 4
    assert not torch.equal(rank0["batches"][0], rank1["batches"][0]), "ranks saw the same data"
    final0, final1 = rank0["final"], rank1["final"]
    assert final0.keys() == final1.keys()
    for k, v in final0.items():  # parameters and running statistics of peers, autoencoders, encoders
        assert torch.equal(v, final1[k]), k
        assert torch.equal(rank0["initial"][k], rank1["initial"][k]), k
    for prefix in ["student.", "other_peers.0.", "autoencoders.0.", "autoencoders.1.", "inheritance_encoders.0.1.",
                   "exploration_encoders.1.0."]:
        moved = [k for k in final0 if k.startswith(prefix) and not torch.equal(rank0["initial"][k], final0[k])]
        assert moved, f"nothing under {prefix} trained"


if __name__ == "__main__":
    run_ddp_script(ddp_run, Path(sys.argv[1]))
