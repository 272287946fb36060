"""Mutual learning with one peer per process (``placement: peer_parallel``), the ``simultaneous`` schedule,
and the errors of a placement that cannot run.

Also a script: ``python tests/test_peer_parallel.py OUT_DIR WORLD`` runs peer-parallel fits on WORLD CPU
processes (gloo): with 2 processes, BatchNorm peers of two widths under both schedules plus an interrupted,
resumed and uninterrupted run; with 4, BatchNorm-free peers under both schedules. Each rank saves what it
trained on and its peer under OUT_DIR; the slow tests compare them with replicated DML in this process.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from helpers import DIGITS_SHAPE as SHAPE, ROOT, Interrupted, KillAtStep, requires_cuda, run_ddp_script, trainer
from helpers.peer_record import RankRecord
from lightning_kd.callbacks import MutualAlternation
from lightning_kd.datamodules import DigitsDataModule, SyntheticDataModule
from lightning_kd.methods import DML, IEDML, Supervised
from lightning_kd.models import build_network
from lightning_kd.peer_parallel import private_random_stream
from lightning_kd.tools import peer_cost

NARROW, WIDE = {"name": "small_cnn", "width": 4}, {"name": "small_cnn", "width": 6}
MLP = "helpers.nets.tiny_mlp"
DROPOUT_PEERS = [{"name": "helpers.nets.dropout_mlp", "width": w} for w in (16, 24)]
SCHEDULES = ("sequential", "simultaneous")


def make_dml(peers, cls=DML, **kwargs):
    return cls(peers=peers, num_classes=10, input_shape=SHAPE,
               optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4), **kwargs)


def synthetic(batch_size=8, pad=1):
    return SyntheticDataModule(num_classes=10, input_shape=SHAPE, train_size=64, val_size=24, test_size=16,
                               batch_size=batch_size, pad=pad)


# ----------------------------------------------------------------------------- the simultaneous schedule
class RecordingDML(DML):
    """DML that records, per peer turn, the other peers' logits it learnt from."""

    def on_fit_start(self):
        self.seen = []

    def peer_losses(self, i, output, others, batch):
        self.seen.append((i, {j: v.logits.clone() for j, v in others.items()}, batch[0].clone()))
        return super().peer_losses(i, output, others, batch)


def test_simultaneous_schedule_learns_from_the_predictions_before_the_step(tmp_path):
    pl.seed_everything(0)
    model = make_dml([NARROW, WIDE], cls=RecordingDML, schedule="simultaneous")
    initial = [copy.deepcopy(p).train() for p in model.peers]
    trainer(tmp_path, limit_train_batches=1).fit(model, datamodule=DigitsDataModule(batch_size=16))
    (i0, seen_by_0, x), (i1, seen_by_1, _) = model.seen
    assert (i0, i1) == (0, 1)
    with torch.no_grad():
        before = [p(x) for p in initial]  # train mode: batch statistics, as in the step
        after = copy.deepcopy(model.peers[0]).train()(x)
    assert torch.allclose(seen_by_0[1], before[1], atol=1e-6)
    assert torch.allclose(seen_by_1[0], before[0], atol=1e-6), "peer 1 learnt from peer 0's refreshed logits"
    assert not torch.allclose(before[0], after, atol=1e-3), "peer 0 did not move"


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [({"schedule": "alternate"}, "schedule must be one of"),
                                           ({"placement": "per_gpu"}, "placement must be one of")])
def test_unknown_schedule_or_placement_is_an_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dml([NARROW, WIDE], **kwargs)


def test_peer_parallel_needs_the_peer_parallel_strategy(tmp_path):
    model = make_dml([NARROW, WIDE], placement="peer_parallel")
    with pytest.raises(ValueError, match="needs the trainer's strategy 'peer_parallel'.*SingleDeviceStrategy"):
        trainer(tmp_path).fit(model, datamodule=synthetic())


@pytest.mark.parametrize("model, match", [
    (lambda: make_dml([NARROW, WIDE], placement="peer_parallel"), "2 peers on world_size / 2 processes, but there are 1"),
    (lambda: make_dml([NARROW, WIDE]), "DML .* with placement 'peer_parallel'"),
    (lambda: Supervised(student=NARROW, num_classes=10, input_shape=SHAPE), "Supervised is not a DML"),
])
def test_peer_parallel_refuses_what_it_cannot_place(tmp_path, model, match):
    """One process: too few for two peers; the strategy with a replicated DML or another method."""
    model = model()
    before = copy.deepcopy(model.state_dict())
    try:  # Lightning sets LOCAL_RANK etc. for its process group: a later multi-process launch must not see them
        with pytest.raises(ValueError, match=match), mock.patch.dict(os.environ):
            trainer(tmp_path, strategy="peer_parallel").fit(model, datamodule=synthetic())
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "it trained"


# ----------------------------------------------------------------------------- the cost figures of the README
def test_peer_parallel_cost_counts_match_a_hand_count():
    """tiny_mlp (64 -> 16 tanh -> 10) at batch 4, counted by hand: float32 bytes and 2 FLOPs per multiply-add."""
    b, sizes = 4, [(64, 16), (16, 10)]
    params = sum(i * o + o for i, o in sizes) * 4
    forward = sum(2 * b * i * o for i, o in sizes)
    backward = forward + 2 * b * 16 * 10  # every weight gradient; the input gradient of fc only (x needs none)
    kept = (b * 64 + b * 16 + 16 * 10) * 4  # x, the tanh output and fc's weight (what the two matmuls need)
    one = peer_cost.measure(MLP, 10, SHAPE, b)
    assert one == {"params": params, "grads": params, "buffers": 0, "momentum": params, "activations": kept,
                   "forward": forward, "train": forward + backward}
    figures = peer_cost.per_gpu([one, one, one], b, 10)
    replicated, parallel = figures["replicated"], figures["peer_parallel"]
    assert replicated["state"] == 3 * parallel["state"] == 9 * params
    assert replicated["flops"] == 3 * (forward + backward) + 2 * forward  # two refreshes (sequential)
    assert parallel["flops"] == forward + backward + forward  # peer 0's process: its step and its refresh
    assert parallel["exchanged"] == (3 + 2) * b * 10 * 4  # one all-gather of 3 logits, 2 refresh broadcasts


def test_peer_parallel_measured_cost_derives_each_placement_from_the_peers_alone():
    """Three peers measured alone (hand numbers, ms). Replicated: every step, and under ``sequential`` the
    refreshes of peers 0 and 1. Peer-parallel ``simultaneous``: the slowest step; ``sequential``: the forwards
    at once, then each peer's backward + step and the refreshes in turn."""
    ms = 1e-3
    alone = [{"step_s": 10 * ms, "forward_s": 4 * ms, "refresh_s": 3 * ms, "peak": 100.0, "held": 40.0},
             {"step_s": 20 * ms, "forward_s": 7 * ms, "refresh_s": 5 * ms, "peak": 300.0, "held": 90.0},
             {"step_s": 24 * ms, "forward_s": 8 * ms, "refresh_s": 6 * ms, "peak": 200.0, "held": 60.0}]
    figures = peer_cost.per_gpu_measured(alone)
    replicated, parallel = figures["replicated"], figures["peer_parallel"]
    assert replicated["sequential_s"] == pytest.approx((10 + 20 + 24 + 3 + 5) * ms)
    assert replicated["simultaneous_s"] == pytest.approx((10 + 20 + 24) * ms)
    assert parallel["simultaneous_s"] == pytest.approx(24 * ms)
    assert parallel["sequential_s"] == pytest.approx((8 + (6 + 13 + 16) + (3 + 5)) * ms)
    assert replicated["peak"] == 600.0 and parallel["peak"] == 300.0
    on_cpu = [dict(p, peak=None, held=None) for p in alone]
    assert peer_cost.per_gpu_measured(on_cpu)["replicated"]["peak"] is None


@pytest.mark.parametrize("args, message", [(["--repeats", "0"], "--repeats must be >= 1"),
                                           (["--device", "cuda"], "no CUDA GPU is visible")])
def test_peer_parallel_cost_tool_refuses_bad_arguments_before_measuring(args, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(peer_cost, "measure", lambda *a: pytest.fail("measured"))
    with pytest.raises(SystemExit):
        peer_cost.main(args)
    assert message in capsys.readouterr().err


def test_peer_parallel_cost_timing_is_the_median_after_the_warmup(monkeypatch):
    ticks = iter([0, 9, 10, 19, 20, 29,  # three warm-up calls of 9 s, left out
                  30, 31, 40, 45, 50, 52])  # then calls of 1, 5 and 2 s
    monkeypatch.setattr(peer_cost.time, "perf_counter", lambda: next(ticks))
    calls = []
    assert peer_cost.median_seconds(lambda: calls.append(1), torch.device("cpu"), repeats=3) == 2
    assert len(calls) == 6


@requires_cuda
def test_peer_parallel_measured_gpu_memory_agrees_with_the_counts():
    """On the GPU: what one peer holds between steps is its counted state (the allocator rounds each tensor up to
    512 bytes), and the peak of a step holds that state and the activations autograd keeps."""
    b = 64
    counted = peer_cost.measure("resnet8x4", 100, (3, 32, 32), b)
    state = counted["params"] + counted["grads"] + counted["buffers"] + counted["momentum"]
    tensors = 3 * len(list(build_network("resnet8x4", 100).parameters())) + len(list(build_network("resnet8x4", 100).buffers()))
    alone = peer_cost.measure_on(torch.device("cuda"), "resnet8x4", 100, (3, 32, 32), b, repeats=3)
    assert state <= alone["held"] <= state + 512 * tensors
    assert alone["peak"] + b * 3 * 32 * 32 * 4 >= alone["held"] + counted["activations"]


# ----------------------------------------------------------------------------- the multi-process script
def peer_parallel_fit(out: Path, name: str, peers, epochs=1, callbacks=(), ckpt_path=None, **kwargs):
    pl.seed_everything(0)
    model = make_dml(peers, placement="peer_parallel", **kwargs)
    checkpoint = ModelCheckpoint(dirpath=out / name, save_last=True)
    fit_trainer = trainer(out, devices=int(sys.argv[2]), strategy="peer_parallel", max_epochs=epochs,
                          limit_train_batches=3, limit_val_batches=3, enable_checkpointing=True,
                          callbacks=[RankRecord(out, name), checkpoint, *callbacks])
    fit_trainer.fit(model, datamodule=synthetic(), ckpt_path=ckpt_path)
    return model, fit_trainer


def resume_runs(out: Path) -> None:
    """Uninterrupted, killed in epoch 1, and resumed from the killed run's last.ckpt; peers alternate."""
    scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    for name, kill in [("full", []), ("killed", [KillAtStep(4)])]:
        try:
            peer_parallel_fit(out, name, [NARROW, WIDE], epochs=2, lr_scheduler=scheduler,
                              callbacks=[MutualAlternation("every_k", k=2), *kill])
        except Interrupted:
            pass
    peer_parallel_fit(out, "killed", [NARROW, WIDE], epochs=2, lr_scheduler=scheduler,
                      callbacks=[MutualAlternation("every_k", k=2)], ckpt_path=out / "killed" / "last.ckpt")


def script(out: Path, world: str) -> None:
    peers = [NARROW, WIDE] if world == "2" else [MLP, MLP]
    for schedule in SCHEDULES:
        model, fitted = peer_parallel_fit(out, schedule, peers, schedule=schedule)
    try:  # each process holds its own peer only now
        fitted.test(model, datamodule=synthetic())
    except ValueError as error:
        (out / f"test_refused.rank{fitted.global_rank}.txt").write_text(str(error))
    if world == "2":
        peer_parallel_fit(out, "iedml", peers, cls=IEDML)
        resume_runs(out)
        peer_parallel_fit(out, "dropout", DROPOUT_PEERS)


# ----------------------------------------------------------------------------- replicated DML as the reference
class RecordedBatches(pl.LightningDataModule):
    """The batches a peer-parallel run trained on, in order; ``batches[e]`` is epoch ``e``'s."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return DataLoader(self.batches[self.trainer.current_epoch], batch_size=None)


def replicated_run(initial, batches, peers, epochs=1, callbacks=(), **kwargs):
    """Replicated DML on one process, from the same initial peers, on the given global batches."""
    model = make_dml(peers, **kwargs)
    model.load_state_dict(initial)
    fit_trainer = trainer(max_epochs=epochs, limit_train_batches=1.0, reload_dataloaders_every_n_epochs=1,
                          callbacks=list(callbacks))
    fit_trainer.fit(model, datamodule=RecordedBatches(batches))
    return model


def run_script(tmp_path, world: int):
    subprocess.run([sys.executable, __file__, str(tmp_path), str(world)], check=True, cwd=tmp_path, timeout=400)


def ranks_of(tmp_path, name, world):
    return [torch.load(tmp_path / f"{name}.rank{r}.pt", weights_only=False) for r in range(world)]


def initial_of(tmp_path, name, world):
    """Every peer before the fit, the same on every rank (each builds every peer from the same seed)."""
    states = [torch.load(tmp_path / f"{name}.rank{r}.initial.pt", weights_only=True) for r in range(world)]
    for state in states[1:]:
        assert all(torch.equal(v, state[k]) for k, v in states[0].items())
    return states[0]


def assert_same_split(ranks, reference, exact=False):
    """Each peer group's first rank holds its peer's share of the reference's state (its network and
    per-peer heads), the shares together are the whole state, and each share equals the reference's."""
    want = reference.state_dict()
    shares = [rank["final"] for rank in ranks]
    assert sorted(k for share in shares for k in share) == sorted(want)
    for rank, share in zip(ranks, shares):
        for k, v in share.items():
            if exact:
                assert torch.equal(v, want[k]), k
            else:
                torch.testing.assert_close(v, want[k], rtol=1e-5, atol=1e-6, msg=f"peer {rank['peer']}: {k}")


# The tests reading its launch run in one test process under pytest-xdist (each process would launch it again).
SHARES_TWO_RANKS = pytest.mark.xdist_group("peer_parallel_two_ranks")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("peer_parallel_w2")
    run_script(out, 2)
    return out


@SHARES_TWO_RANKS
@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_peer_parallel_two_ranks_equal_replicated_dml_step_for_step(two_ranks, schedule):
    """W=2, K=2: BatchNorm peers of two widths, each on its own rank, end as replicated DML on one process."""
    ranks = ranks_of(two_ranks, schedule, 2)
    assert [r["peer"] for r in ranks] == [0, 1]
    assert len(ranks[0]["batches"]) == 3
    for (x0, y0), (x1, y1) in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert torch.equal(x0, x1) and torch.equal(y0, y1), "the peers saw different (augmented) samples"
    initial = initial_of(two_ranks, schedule, 2)
    reference = replicated_run(initial, [ranks[0]["batches"]], [NARROW, WIDE], schedule=schedule)
    assert_same_split(ranks, reference)
    for k, rank in enumerate(ranks):
        assert rank["global_step"] == 6  # two optimizer steps per batch, as replicated DML counts them
        assert f"peer {1 - k} is not on this process" in rank["refusal"]
    # Rank 0, the logger's, logs the loss terms of the peer stepped by rank 1 as rank 1 computed them.
    logged, peer1 = ranks[0]["metrics"], ranks[1]["metrics"]
    for name in ["ce", "kl", "loss"]:
        assert logged[f"train/peer1/{name}"] == peer1[f"train/peer1/{name}"]
    assert logged["train/loss"] == pytest.approx((logged["train/peer0/loss"] + logged["train/peer1/loss"]) / 2)
    for k in range(2):  # and it cannot be tested as it is: its checkpoint has every peer
        assert f"holds only peer {k}" in (two_ranks / f"test_refused.rank{k}.txt").read_text()


@SHARES_TWO_RANKS
@pytest.mark.slow
def test_peer_parallel_peers_with_dropout_still_train_on_the_same_augmented_batches(two_ranks):
    """Peers whose forwards draw unequal counts of random numbers (dropout, widths 16 and 24; peer 0 also
    refreshes) on ranks that crop the batches on the device from the global generator: the crops stay equal."""
    ranks = ranks_of(two_ranks, "dropout", 2)
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 3
    for (x0, y0), (x1, y1) in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert torch.equal(y0, y1) and torch.equal(x0, x1), "the peers saw different random crops"


def test_peer_parallel_random_stream_is_new_per_step_and_process_and_leaves_the_global_one():
    def draws(rank, step):
        with private_random_stream(7, rank, step, torch.device("cpu")):
            return torch.rand(4)

    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = draws(0, 0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, draws(0, 0))  # the same (seed, rank, step) draws the same: what a resume relies on
    others = [draws(1, 0), draws(0, 1), draws(1, 1)]
    assert all(not torch.equal(first, other) for other in others)
    assert not torch.equal(others[0], others[1])
    # the global generator goes on as if nothing had been drawn: its first numbers after seed 0
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(0)))


@SHARES_TWO_RANKS
@pytest.mark.slow
def test_peer_parallel_iedml_equals_replicated_iedml(two_ranks):
    """Each peer's factor is computed on its own rank and travels with its logits."""
    ranks = ranks_of(two_ranks, "iedml", 2)
    reference = replicated_run(initial_of(two_ranks, "iedml", 2), [ranks[0]["batches"]], [NARROW, WIDE], cls=IEDML)
    assert_same_split(ranks, reference)
    assert any(k.startswith("autoencoders.1.") for k in ranks[1]["final"])


@SHARES_TWO_RANKS
@pytest.mark.slow
def test_peer_parallel_checkpoint_holds_every_peer_and_validation_reports_each(two_ranks):
    ranks = ranks_of(two_ranks, "sequential", 2)
    path = two_ranks / "sequential" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert len(checkpoint["optimizer_states"]) == 2
    loaded = DML.load_from_checkpoint(path)
    assert_same_split(ranks, loaded, exact=True)
    data = synthetic()
    data.setup("fit")
    x, y = data.on_after_batch_transfer(data.splits["val"], 0)  # the whole validation split, normalised
    for k, spec in enumerate([NARROW, WIDE]):
        loaded.export_peer(k, two_ranks / f"exported{k}.pt")
        fresh = build_network(spec, 10, 1)
        fresh.load_state_dict(torch.load(two_ranks / f"exported{k}.pt", weights_only=True))
        with torch.no_grad():
            accuracy = (fresh.eval()(x).argmax(1) == y).float().mean().item()
        for rank in ranks:
            assert rank["metrics"][f"val/peer{k}/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert ranks[0]["metrics"]["val/acc"] == ranks[0]["metrics"]["val/peer0/acc"]


@SHARES_TWO_RANKS
@pytest.mark.slow
def test_peer_parallel_killed_and_resumed_ends_like_an_uninterrupted_run(two_ranks):
    full, resumed = ranks_of(two_ranks, "full", 2), ranks_of(two_ranks, "killed", 2)
    assert len(full[0]["batches"]) == 6 and len(resumed[0]["batches"]) == 3  # the resume ran epoch 1 only
    for a, b in zip(full, resumed):
        assert a["peer"] == b["peer"]
        assert a["final"].keys() == b["final"].keys()
        for k, v in a["final"].items():
            assert torch.equal(v, b["final"][k]), k
    assert full[0]["global_step"] == resumed[0]["global_step"] == 6  # one stepping peer per batch
    # and the uninterrupted run is replicated DML with the same alternation and LR schedule
    initial = initial_of(two_ranks, "full", 2)
    epochs = [full[0]["batches"][:3], full[0]["batches"][3:]]
    reference = replicated_run(initial, epochs, [NARROW, WIDE], epochs=2, callbacks=[MutualAlternation("every_k", k=2)],
                               lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    assert_same_split(full, reference)


@pytest.mark.slow
def test_peer_parallel_four_ranks_equal_replicated_dml_on_the_global_batch(tmp_path):
    """W=4, K=2, D=2: BatchNorm-free peers; ranks r = peer * 2 + data group."""
    run_script(tmp_path, 4)
    for schedule in SCHEDULES:
        ranks = ranks_of(tmp_path, schedule, 4)
        assert [(r["peer"], r["data_group"]) for r in ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for a, b in [(0, 2), (1, 3)]:  # a data group: same samples
            assert all(torch.equal(p[0], q[0]) for p, q in zip(ranks[a]["batches"], ranks[b]["batches"]))
        assert not torch.equal(ranks[0]["batches"][0][0], ranks[1]["batches"][0][0]), "data groups saw the same data"
        for a, b in [(0, 1), (2, 3)]:  # a peer group: the same peer
            assert all(torch.equal(v, ranks[b]["final"][k]) for k, v in ranks[a]["final"].items())
            assert ranks[a]["refusal"] and ranks[b]["refusal"]
        global_batches = [(torch.cat([x0, x1]), torch.cat([y0, y1]))
                          for (x0, y0), (x1, y1) in zip(ranks[0]["batches"], ranks[1]["batches"])]
        initial = initial_of(tmp_path, schedule, 4)
        reference = replicated_run(initial, [global_batches], [MLP, MLP], schedule=schedule)
        assert_same_split([ranks[0], ranks[2]], reference)


# ----------------------------------------------------------------------------- the shipped config, through the CLI
SYNTHETIC_CIFAR = ["--data=lightning_kd.datamodules.SyntheticDataModule", "--data.init_args.train_size=96",
                   "--data.init_args.val_size=32", "--data.init_args.test_size=48", "--data.init_args.batch_size=16"]


def cli(args: list[str], cwd: Path) -> str:
    """``lightning-kd ARGS`` in a fresh process (tests/ importable for the recorder); its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lightning_kd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_peer_parallel_shipped_config_trains_on_two_processes_through_the_cli(tmp_path):
    """``lightning-kd fit -c configs/cifar10/dml_peer_parallel.yaml`` as shipped (2 processes, one resnet8x4 each,
    the recipe's crops and flips on the device) on CIFAR-shaped synthetic data and the CPU; then ``test`` from
    its checkpoint on one process."""
    config = str(ROOT / "configs/cifar10/dml_peer_parallel.yaml")
    run = tmp_path / "run"
    cli(["fit", "-c", config, *SYNTHETIC_CIFAR, "--trainer.accelerator=cpu", "--trainer.max_epochs=2",
         "--trainer.limit_train_batches=3", f"--checkpoint.dirpath={run}",
         "--trainer.callbacks+=helpers.peer_record.RankRecord", f"--trainer.callbacks.out={tmp_path}",
         "--trainer.callbacks.name=cli"], tmp_path)
    ranks = ranks_of(tmp_path, "cli", 2)
    assert [r["peer"] for r in ranks] == [0, 1] and [r["global_step"] for r in ranks] == [12, 12]
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == 6
    for (x0, y0), (x1, y1) in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert torch.equal(y0, y1) and torch.equal(x0, x1), "the peers saw different (augmented) samples"
    checkpoint = torch.load(run / "last.ckpt", weights_only=False)["state_dict"]
    assert sorted(checkpoint) == sorted(k for r in ranks for k in r["final"])
    for rank in ranks:
        assert all(torch.equal(v, checkpoint[k]) for k, v in rank["final"].items()), f"peer {rank['peer']}"
    assert {"val/peer0/acc", "val/peer1/acc"} <= set(ranks[0]["metrics"])

    printed = cli(["test", "-c", config, *SYNTHETIC_CIFAR, "--trainer.accelerator=cpu", "--trainer.devices=1",
                   "--trainer.strategy=auto", f"--ckpt_path={run / 'last.ckpt'}"], tmp_path)
    model = DML.load_from_checkpoint(run / "last.ckpt", map_location="cpu").eval()
    data = SyntheticDataModule(input_shape=(3, 32, 32), train_size=96, val_size=32, test_size=48, batch_size=16)
    data.setup("test")
    x, y = data.on_after_batch_transfer(data.splits["test"], 0)
    with torch.no_grad():
        expected = (model.student(x).argmax(1) == y).float().mean().item()
    reported = float(re.search(r"test/acc ([0-9.e-]+)", printed).group(1))
    assert reported == pytest.approx(expected, abs=5e-4)  # printed with 4 significant digits


if __name__ == "__main__":
    run_ddp_script(script, Path(sys.argv[1]), sys.argv[2])
