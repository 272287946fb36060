"""Deep Mutual Learning: two or more peers teach each other, no pre-trained teacher.

Zhang, Xiang, Hospedales, Lu. "Deep Mutual Learning", CVPR 2018.
https://arxiv.org/abs/1706.00384
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import ParallelStrategy
from torch import Tensor, nn

from lightning_kd.base import NetSpec, StudentModule, accuracy
from lightning_kd.distributed import average_across_ranks
from lightning_kd.features import FeatureHooks, NetOutput, example_features
from lightning_kd.losses import dml_loss
from lightning_kd.models import build_network
from lightning_kd.peer_parallel import PeerLayout, PeerParallelStrategy

SCHEDULES = ("sequential", "simultaneous")
PLACEMENTS = ("replicated", "peer_parallel")


@contextmanager
def buffers_kept(net: nn.Module):
    """Run a forward in training mode (batch statistics) without touching running statistics."""
    saved = [b.clone() for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(net.buffers(), saved):
                b.copy_(s)


def detached(output: NetOutput) -> NetOutput:
    return NetOutput(output.logits.detach(), {k: v.detach() for k, v in output.features.items()})


class DML(StudentModule):
    """Deep Mutual Learning: each peer minimises ``CE + kl_weight * mean_j KL(p_j || p_i)``.

    "Deep Mutual Learning" (Zhang et al., CVPR 2018), https://arxiv.org/abs/1706.00384.
    Two or more peers of any architectures learn together; peer ``j``'s predictions are
    detached targets for peer ``i``. With ``schedule: sequential`` (the paper's Algorithm 1)
    the peers step in turn and each later peer is trained against the *refreshed* predictions
    of the peers that already stepped on this batch (one extra no-grad forward per stepped
    peer); with ``schedule: simultaneous`` (codistillation, Anil et al. 2018) every peer steps
    against the predictions all peers made before this batch's steps. This loop of per-peer
    forwards and steps is DML's own: it replaces the one-direction step of the base.

    Which peers step on a batch is decided by :class:`~lightning_kd.callbacks.MutualAlternation`
    (it sets ``stepping_peers``); without it every peer steps on every batch, in order (the paper).

    Optimisation is manual: one optimizer per peer, built by the same ``optimizer`` factory,
    with its own LR scheduler stepped once per epoch. ``trainer.global_step`` counts optimizer
    steps, so it grows by the number of stepping peers per batch (mind ``max_steps``); the
    trainer's ``gradient_clip_val`` is not supported under manual optimisation.

    Multi-GPU, ``placement: replicated`` (default): every rank holds every peer. DDP's own
    gradient reducer expects one backward per forward over all parameters, which mutual
    learning breaks (one backward per peer). DML therefore blocks it and averages the stepping
    peer's gradients itself (one flat ``all_reduce`` per step) and its BatchNorm running
    statistics after the step, so every rank holds identical peers. Works with
    ``strategy="ddp"`` at its default settings (no ``find_unused_parameters``).

    ``placement: peer_parallel`` (with ``strategy: peer_parallel``, see
    :mod:`lightning_kd.peer_parallel`): ``W = K x D`` ranks, rank ``r`` holds only peer
    ``r // D`` (``layout``), its optimizer and its share of the work; gradients and running
    statistics are averaged within the peer's ``D`` ranks, and the ``K`` ranks of a data
    group exchange the peers' detached outputs (:meth:`shared_output`) with one all-gather
    per step, plus one broadcast per refreshed peer under ``schedule: sequential``. The
    same steps as ``replicated`` on the same global batch. Checkpoints are gathered to rank 0
    in the replicated layout (every peer, its optimizer and scheduler), so they resume in
    this placement and load anywhere with every peer (``load_from_checkpoint``,
    ``export_peer``). After such a fit each process keeps its own peer only.

    Peer 0 is ``self.student``: it is what ``val/acc``, ``test/acc``, ``predict`` and
    ``export_student`` use; the others are ``other_peers`` (each peer is held once, and
    ``peers`` lists them all). Every peer is evaluated as ``val/peer{i}/acc``.

    Extension point: override :meth:`peer_losses` to change the mutual term (e.g. IE-DML);
    its names are weighted by ``self.loss_weights`` and logged as ``train/peer{i}/<name>``.

    Args:
        peers: two or more network specs (same forms as ``student`` in the base class).
        ce_weight: weight of each peer's cross-entropy with the labels.
        kl_weight: weight of the mean KL to the other peers.
        schedule: ``"sequential"`` (Algorithm 1) or ``"simultaneous"``; they differ only when
            several peers step on a batch.
        placement: ``"replicated"`` (every rank holds every peer) or ``"peer_parallel"`` (one
            peer per rank; needs ``strategy: peer_parallel``).
        **kwargs: ``num_classes``, ``input_shape``, ``optimizer``, ``lr_scheduler``; see
            :class:`~lightning_kd.base.StudentModule`.
    """

    def __init__(self, peers: list[NetSpec], ce_weight: float = 1.0, kl_weight: float = 1.0,
                 schedule: str = "sequential", placement: str = "replicated", **kwargs):
        if schedule not in SCHEDULES:
            raise ValueError(f"DML schedule must be one of {SCHEDULES}, got {schedule!r}.")
        if placement not in PLACEMENTS:
            raise ValueError(f"DML placement must be one of {PLACEMENTS}, got {placement!r}.")
        if isinstance(peers, (str, dict)) or len(peers) < 2:
            raise ValueError(f"DML trains two or more peers together; got peers={peers!r}. Give a list, "
                             f"e.g. peers: [{{name: small_cnn, width: 4}}, {{name: small_cnn, width: 8}}].")
        if "student" in kwargs:
            raise ValueError("DML takes `peers`, not `student`: peer 0 is the student.")
        super().__init__(student=peers[0], **kwargs)
        # Keep DML's own arguments, not the base's `student`, so load_from_checkpoint works.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "student"])
        self.automatic_optimization = False
        self.other_peers = nn.ModuleList(build_network(spec, self.num_classes, self.input_shape[0])
                                         for spec in peers[1:])
        self.other_hooks: list[Optional[FeatureHooks]] = [None] * len(self.other_peers)
        self.peer_val_acc = nn.ModuleList(accuracy(self.num_classes) for _ in peers)
        self.loss_weights = {"ce": ce_weight, "kl": kl_weight}
        #: Indices of the peers that step on the current batch, in order; None = all of them.
        self.stepping_peers: Optional[Sequence[int]] = None
        self.schedule, self.placement = schedule, placement
        #: This process's peer and process groups during a peer-parallel fit; None otherwise.
        self.layout: Optional[PeerLayout] = None

    @property
    def peers(self) -> tuple[nn.Module, ...]:
        """Every peer, peer 0 (the student) first."""
        return (self.student, *self.other_peers)

    def setup(self, stage: str) -> None:
        missing = [i for i, peer in enumerate(self.peers) if peer is None]
        if missing:
            raise ValueError(f"this {type(self).__name__} holds only peer {self.layout.peer}: it was fitted with "
                             f"placement 'peer_parallel', where each process keeps its own peer. Load every peer "
                             f"from the run's checkpoint ({type(self).__name__}.load_from_checkpoint(path)) to "
                             f"test, predict or fit it.")
        super().setup(stage)  # compiles peer 0 (the student) when asked
        if stage == "fit" and self.compile_networks:
            for peer in self.other_peers:
                peer.compile()
        self.layout = None
        if stage == "fit":
            self.place_peers()

    def place_peers(self) -> None:
        """Check the strategy against ``placement``; for ``peer_parallel``, keep only this rank's peer."""
        strategy = self.trainer.strategy
        if self.placement == "replicated":
            return  # PeerParallelStrategy refuses a replicated module itself
        if not isinstance(strategy, PeerParallelStrategy):
            raise ValueError(f"placement 'peer_parallel' puts one peer on each process and needs the trainer's "
                             f"strategy 'peer_parallel' (lightning_kd.peer_parallel.PeerParallelStrategy), got "
                             f"{type(strategy).__name__}: set trainer.strategy: peer_parallel, or placement: "
                             f"replicated.")
        if getattr(strategy, "_layer_sync", None) is not None:
            raise ValueError("placement 'peer_parallel' averages BatchNorm statistics within each peer's "
                             "processes itself; trainer.sync_batchnorm would synchronise across peers: drop it.")
        self.layout = PeerLayout(len(self.peers))
        for i in range(len(self.peers)):
            if i != self.layout.peer:
                for module in self.peer_modules(i):
                    self.drop(module)

    def drop(self, module: nn.Module) -> None:
        """Remove a submodule of another rank's peer (its slot stays, as None)."""
        name = next(n for n, m in self.named_modules() if m is module)
        parent, _, attr = name.rpartition(".")
        setattr(self.get_submodule(parent), attr, None)

    def local_peers(self) -> list[int]:
        """The peers this process holds and trains: all of them, or its own in a peer-parallel fit."""
        return list(range(len(self.peers))) if self.layout is None else [self.layout.peer]

    def watch_peer_layers(self, layers: Sequence[str]) -> list[dict[str, Tensor]]:
        """Make :meth:`peer_forward` of peer ``i`` return the features of ``layers[i]``; returns
        each peer's features for one :meth:`example_input` (eval mode)."""
        features = [self.watch_student([layers[0]])]
        for i, (peer, layer) in enumerate(zip(self.other_peers, layers[1:])):
            self.other_hooks[i] = FeatureHooks(peer, [layer])
            features.append(example_features(peer, self.other_hooks[i], self.example_input()))
        return features

    def peer_forward(self, i: int, x: Tensor) -> NetOutput:
        if i == 0:
            return self.student_forward(x)
        hooks = self.other_hooks[i - 1]
        logits = self.other_peers[i - 1](x)
        return NetOutput(logits, {} if hooks is None else hooks.pop())

    # ----------------------------------------------------------------- the mutual term
    def peer_losses(self, i: int, output: NetOutput, others: dict[int, NetOutput],
                    batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Unweighted losses of peer ``i``.

        Args:
            i: index of the peer that steps.
            output: its logits and features, with autograd.
            others: ``{j: shared_output(j, ...)}`` for every other peer; refreshed for peers
                that already stepped on this batch under ``schedule: sequential``.
            batch: the ``(x, y)`` batch.
        """
        mimicry = torch.stack([dml_loss(output.logits, other.logits) for other in others.values()]).mean()
        return {"ce": F.cross_entropy(output.logits, batch[1]), "kl": mimicry}

    def shared_output(self, i: int, output: NetOutput) -> NetOutput:
        """What peer ``i`` shows the other peers, from its detached ``output``: here its logits.
        Under ``peer_parallel`` this is what travels between processes."""
        return NetOutput(output.logits, {})

    # ----------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        if self.layout is None:
            return self.train_peers(batch)
        with self.layout.own_random_stream(self.global_step, self.device):
            return self.train_peers(batch)

    def train_peers(self, batch) -> None:
        """Step the peers on ``batch`` (this process's, or each its own under ``peer_parallel``)."""
        x, y, _ = self.unpack(batch)
        order = list(range(len(self.peers)) if self.stepping_peers is None else self.stepping_peers)
        own, shown = {}, {}
        for i in self.local_peers():
            if i in order:  # its training forward: the graph waits for its turn
                own[i] = self.peer_forward(i, x)
                shown[i] = self.shared_output(i, detached(own[i]))
            else:
                shown[i] = self.unchanged_output(i, x)
        if self.layout is not None:
            shown = dict(enumerate(self.layout.all_gather("train", shown[self.layout.peer])))
        totals = {}
        for n, i in enumerate(order):
            if i in own:
                others = {j: out for j, out in shown.items() if j != i}
                total = self.weighted_total(self.peer_losses(i, own[i], others, (x, y)), len(x), prefix=f"peer{i}/")
                self.step_peer(i, self.optimizer_of(i), total)
                totals[i] = total.detach()
            else:
                self.count_step()
            if self.schedule == "sequential" and n < len(order) - 1:  # later peers learn from its new predictions
                shown[i] = self.refreshed_output(i, x)
        if self.layout is not None:
            totals = self.gather_losses(order, totals, len(x))
        self.log("train/loss", torch.stack([totals[i] for i in order]).mean(), on_step=True, on_epoch=False,
                 batch_size=len(x))

    def unchanged_output(self, i: int, x: Tensor) -> NetOutput:
        """Peer ``i``'s shared output of ``x`` by a no-grad forward in training mode (batch statistics),
        leaving its running statistics as they are."""
        with torch.no_grad(), buffers_kept(self.peers[i]):
            return self.shared_output(i, self.peer_forward(i, x))

    def refreshed_output(self, i: int, x: Tensor) -> NetOutput:
        """Peer ``i``'s shared output after its step; under ``peer_parallel`` computed by its rank and
        broadcast to the data group."""
        if self.layout is None:
            return self.unchanged_output(i, x)
        mine = self.unchanged_output(i, x) if i == self.layout.peer else None
        return self.layout.broadcast("train", i, mine, like=x)

    def optimizer_of(self, i: int):
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self.local_peers().index(i)]

    def count_step(self) -> None:
        """Count another rank's peer step as Lightning counts ours, so that ``global_step`` (checkpoint
        names, ``max_steps``) is the same on every rank and equals a replicated run's."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def gather_losses(self, order: list[int], totals: dict[int, Tensor], batch_size: int) -> dict[int, Tensor]:
        """Log the loss terms of the peers stepped by other ranks (one small all-gather) and return every
        stepping peer's total. A peer's terms are the names of ``loss_weights``."""
        names = [*sorted(self.loss_weights), "loss"]
        own = self.layout.peer
        if own in totals:
            row = torch.stack([self.loss_terms[f"peer{own}/{name}"] for name in names]).float()
        else:  # this rank's peer sits this batch out
            row = torch.zeros(len(names), device=self.device)
        rows = self.layout.gather_rows(row)
        for i in order:
            if i != own:
                self.log_dict({f"train/peer{i}/{name}": rows[i, j] for j, name in enumerate(names)},
                              on_step=True, on_epoch=False, batch_size=batch_size)
        return {i: rows[i, -1] for i in order}

    def peer_modules(self, i: int) -> list[nn.Module]:
        """The modules that step with peer ``i``: its network, plus any per-peer heads a
        subclass adds (they share its optimizer, its turn and its gradient sync)."""
        return [self.peers[i]]

    def step_peer(self, i: int, optimizer, loss: Tensor) -> None:
        """Backward, average gradients over processes, step; then align running statistics."""
        peer = nn.ModuleList(self.peer_modules(i))
        optimizer.zero_grad()
        strategy = self.trainer.strategy
        # DDP's reducer would wait for gradients of every peer; we reduce this peer's ourselves.
        with strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext():
            self.manual_backward(loss)
        group = None if self.layout is None else self.layout.peer_group
        average_across_ranks([p.grad for p in peer.parameters() if p.grad is not None], group)
        optimizer.step()
        average_across_ranks([b for b in peer.buffers() if b.is_floating_point()], group)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    def configure_optimizers(self):
        pairs = [self.make_optimizer([p for m in self.peer_modules(i) for p in m.parameters() if p.requires_grad])
                 for i in self.local_peers()]
        return [optimizer for optimizer, _ in pairs], [scheduler for _, scheduler in pairs if scheduler is not None]

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.layout is not None:
            self.layout.gather_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.layout is not None:
            self.layout.local_checkpoint(checkpoint, set(self.state_dict()))

    # ----------------------------------------------------------------- evaluation and export
    def evaluation_outputs(self, x: Tensor) -> tuple[NetOutput, None]:
        if self.layout is None:
            return super().evaluation_outputs(x)
        # Peer-parallel validation: every rank gets every peer's logits of its data group's batch.
        own = self.layout.peer
        self.peer_logits = [out.logits for out in self.layout.all_gather("eval", NetOutput(self.peer_forward(own, x).logits, {}))]
        return NetOutput(self.peer_logits[0], {}), None

    def validation_step(self, batch, batch_idx):
        student, _, y = self.evaluate(batch, "val")  # peer 0: val/acc, val/acc5, val/loss
        x = self.unpack(batch)[0]
        for i, metric in enumerate(self.peer_val_acc):
            if self.layout is not None:
                metric.update(self.peer_logits[i], y)
            else:
                metric.update(student.logits if i == 0 else self.peer_forward(i, x).logits, y)
            self.log(f"val/peer{i}/acc", metric)

    def export_peer(self, i: int, path: str) -> None:
        """Save peer ``i`` as a plain state_dict that loads into its architecture."""
        if not 0 <= i < len(self.peers):
            raise IndexError(f"peer index {i} out of range: this DML has {len(self.peers)} peers (0..{len(self.peers) - 1}).")
        if self.peers[i] is None:
            raise ValueError(f"peer {i} is not on this process, which trained peer {self.layout.peer} with placement "
                             f"'peer_parallel': export it from the run's checkpoint, which holds every peer "
                             f"({type(self).__name__}.load_from_checkpoint(path).export_peer({i}, ...)).")
        torch.save(self.peers[i].state_dict(), path)
