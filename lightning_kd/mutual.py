"""The loop of mutual learning, under :class:`~lightning_kd.methods.DML` and :class:`~lightning_kd.methods.IEDML`:
two or more peers, each with its own optimizer, step in turn on a batch, each against what the other peers
show it. This loop of per-peer forwards and steps replaces the one-direction step of the base; where the
peers live (every process, or one peer per process group) is a :mod:`~lightning_kd.placement`, which the
loop calls without asking which one it is. A method writes :meth:`MutualLearning.peer_losses` (and, to show
more than logits, :meth:`MutualLearning.shared_output`).

Zhang, Xiang, Hospedales, Lu. "Deep Mutual Learning", CVPR 2018. https://arxiv.org/abs/1706.00384
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import ParallelStrategy
from torch import Tensor, nn

from lightning_kd.base import NetSpec, StudentModule, accuracy
from lightning_kd.compat import count_optimizer_step
from lightning_kd.features import FeatureHooks, NetOutput, detached, example_features
from lightning_kd.losses import dml_loss
from lightning_kd.models import build_network
from lightning_kd.peer_parallel import PeerLayout
from lightning_kd.placement import PLACEMENTS, Placement

SCHEDULES = ("sequential", "simultaneous")


@contextmanager
def buffers_kept(room: tuple[list[Tensor], list[Tensor]]):
    """Run a forward in training mode (batch statistics) without touching a network's running statistics:
    ``room`` is :func:`buffer_room`'s ``(buffers, spare)``; they are copied to the spare tensors and back, each
    way in one foreach copy."""
    buffers, spare = room
    if not buffers:  # a network without running statistics
        yield
        return
    torch._foreach_copy_(spare, buffers)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(buffers, spare)


def buffer_room(net: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """``net``'s buffers and a spare tensor for each, for :func:`buffers_kept`."""
    buffers = list(net.buffers())
    return buffers, [b.clone() for b in buffers]


def mutual_losses(output: NetOutput, others: dict[int, NetOutput], labels: Tensor) -> dict[str, Tensor]:
    """DML's terms of one peer: ``ce``, its cross-entropy with the labels, and ``kl``, the mean over the other
    peers of KL(their detached predictions || its own) (:func:`~lightning_kd.losses.dml_loss`)."""
    mimicry = torch.stack([dml_loss(output.logits, other.logits) for other in others.values()]).mean()
    return {"ce": F.cross_entropy(output.logits, labels), "kl": mimicry}


class MutualLearning(StudentModule):
    """Peers that learn together, no pre-trained teacher; see :class:`~lightning_kd.methods.DML` for the
    algorithm, the schedules and the placements.

    Peer 0 is ``self.student``: it is what ``val/acc``, ``test/acc``, ``predict`` and ``export_student`` use;
    the others are ``other_peers`` (each peer is held once, and ``peers`` lists them all). Every peer is
    evaluated as ``val/peer{i}/acc``. Which peers step on a batch is ``stepping_peers``, set by
    :class:`~lightning_kd.callbacks.MutualAlternation` (default: every peer, in order). Optimisation is
    manual: one optimizer per peer (:meth:`peer_modules`), built by the same ``optimizer`` factory, with its
    own LR scheduler stepped once per epoch.

    Args:
        peers: two or more network specs (same forms as ``student`` in the base class).
        schedule: ``"sequential"`` or ``"simultaneous"``.
        placement: ``"replicated"`` or ``"peer_parallel"`` (:mod:`lightning_kd.placement`).
        **kwargs: see :class:`~lightning_kd.base.StudentModule`.
    """

    def __init__(self, peers: list[NetSpec], schedule: str = "sequential", placement: str = "replicated", **kwargs):
        if schedule not in SCHEDULES:
            raise ValueError(f"DML schedule must be one of {SCHEDULES}, got {schedule!r}.")
        if placement not in PLACEMENTS:
            raise ValueError(f"DML placement must be one of {tuple(PLACEMENTS)}, got {placement!r}.")
        if isinstance(peers, (str, dict)) or len(peers) < 2:
            raise ValueError(f"DML trains two or more peers together; got peers={peers!r}. Give a list, "
                             f"e.g. peers: [{{name: small_cnn, width: 4}}, {{name: small_cnn, width: 8}}].")
        if "student" in kwargs:
            raise ValueError("DML takes `peers`, not `student`: peer 0 is the student.")
        super().__init__(student=peers[0], **kwargs)
        # Keep the method's own arguments, not the base's `student`, so load_from_checkpoint works.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "student"])
        self.automatic_optimization = False
        self.other_peers = nn.ModuleList(build_network(spec, self.num_classes, self.input_shape[0])
                                         for spec in peers[1:])
        self.other_hooks: list[Optional[FeatureHooks]] = [None] * len(self.other_peers)
        self.peer_val_acc = nn.ModuleList(accuracy(self.num_classes) for _ in peers)
        #: Indices of the peers that step on the current batch, in order; None = all of them.
        self.stepping_peers: Optional[Sequence[int]] = None
        self.schedule, self.placement_name = schedule, placement
        self.placement: Placement = PLACEMENTS["replicated"](len(peers))
        # What each step reads of the peers, looked up at its first use in a fit (setup starts over).
        self.peer_tensors: dict[int, tuple[list[nn.Parameter], list[Tensor]]] = {}
        self.buffer_rooms: dict[nn.Module, tuple[list[Tensor], list[Tensor]]] = {}

    @property
    def peers(self) -> tuple[nn.Module, ...]:
        """Every peer, peer 0 (the student) first."""
        return (self.student, *self.other_peers)

    @property
    def layout(self) -> Optional[PeerLayout]:
        """This process's peer and process groups in (and after) a peer-parallel fit; None otherwise."""
        return self.placement.layout

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
        # Outside a fit every process holds every peer (test, predict, validate).
        self.placement = PLACEMENTS[self.placement_name if stage == "fit" else "replicated"](len(self.peers))
        self.placement.place(self)
        self.peer_tensors, self.buffer_rooms = {}, {}

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

    def peer_modules(self, i: int) -> list[nn.Module]:
        """The modules that step with peer ``i``: its network, plus any per-peer heads a
        subclass adds (they share its optimizer, its turn and its gradient averaging)."""
        return [self.peers[i]]

    # ----------------------------------------------------------------- what a method writes
    def peer_losses(self, i: int, output: NetOutput, others: dict[int, NetOutput],
                    batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Unweighted losses of peer ``i``, weighted by ``self.loss_weights`` and logged as
        ``train/peer{i}/<name>``.

        Args:
            i: index of the peer that steps.
            output: its logits and features, with autograd.
            others: ``{j: shared_output(j, ...)}`` for every other peer; refreshed for peers
                that already stepped on this batch under ``schedule: sequential``.
            batch: the :class:`~lightning_kd.batch.Batch`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement peer_losses(i, output, others, batch)")

    def shared_output(self, i: int, output: NetOutput) -> NetOutput:
        """What peer ``i`` shows the other peers, from its detached ``output``: here its logits. Under
        ``peer_parallel`` this is what travels between processes."""
        return NetOutput(output.logits, {})

    # ----------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        with self.placement.random_stream(self.global_step, self.device):
            return self.train_peers(batch)

    def train_peers(self, batch) -> None:
        """Step the peers on ``batch`` (this process's, or each its own under ``peer_parallel``)."""
        batch = self.unpack(batch)
        x = batch.x
        order = list(range(len(self.peers)) if self.stepping_peers is None else self.stepping_peers)
        own, shown = {}, {}
        for i in self.placement.local_peers:
            if i in order:  # its training forward: the graph waits for its turn
                own[i] = self.peer_forward(i, x)
                shown[i] = self.shared_output(i, detached(own[i]))
            else:
                shown[i] = self.unchanged_output(i, x)
        shown = self.placement.exchange(shown)
        totals = {}
        for n, i in enumerate(order):
            if i in own:
                others = {j: out for j, out in shown.items() if j != i}
                total = self.weighted_total(self.peer_losses(i, own[i], others, batch), len(x), prefix=f"peer{i}/")
                self.step_peer(i, total)
                totals[i] = total.detach()
            else:  # stepped by another process: counted as ours, so global_step is the same on every rank
                count_optimizer_step(self.trainer)
            if self.schedule == "sequential" and n < len(order) - 1:  # later peers learn from its new predictions
                shown[i] = self.placement.refreshed(i, lambda: self.unchanged_output(i, x), like=x)
        names = [*sorted(self.loss_weights), "loss"]
        logged, totals = self.placement.gather_losses(order, totals, self.loss_terms, names, self.device)
        if self.logs_step_values():
            self.log_step({f"train/{name}": value for name, value in logged.items()}
                          | {"train/loss": torch.stack([totals[i] for i in order]).mean()}, len(x))

    def unchanged_output(self, i: int, x: Tensor) -> NetOutput:
        """Peer ``i``'s shared output of ``x`` by a no-grad forward in training mode (batch statistics),
        leaving its running statistics as they are."""
        with torch.no_grad(), self.buffers_kept(self.peers[i]):
            return self.shared_output(i, self.peer_forward(i, x))

    def buffers_kept(self, net: nn.Module):
        """:func:`buffers_kept` for ``net`` (a peer or a module of one), its room made at its first use in a fit."""
        room = self.buffer_rooms.get(net)
        if room is None:
            room = self.buffer_rooms[net] = buffer_room(net)
        return buffers_kept(room)

    def peer_state(self, i: int) -> tuple[list[nn.Parameter], list[Tensor]]:
        """Peer ``i``'s parameters and floating buffers (its modules'), looked up at its first step of a fit
        (the strategy has placed the tensors by then) and kept for the others."""
        found = self.peer_tensors.get(i)
        if found is None:
            peer = nn.ModuleList(self.peer_modules(i))
            found = self.peer_tensors[i] = (list(peer.parameters()), [b for b in peer.buffers() if b.is_floating_point()])
        return found

    def step_peer(self, i: int, loss: Tensor) -> None:
        """Backward, average gradients over the peer's processes, step; then align running statistics."""
        parameters, buffers = self.peer_state(i)
        optimizers = self.optimizers()
        optimizer = (optimizers if isinstance(optimizers, list) else [optimizers])[self.placement.local_peers.index(i)]
        optimizer.zero_grad()
        strategy = self.trainer.strategy
        # DDP's reducer would wait for gradients of every peer; the placement averages this peer's.
        with strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext():
            self.manual_backward(loss)
        self.placement.average([p.grad for p in parameters if p.grad is not None])
        optimizer.step()
        self.placement.average(buffers)

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    def configure_optimizers(self):
        pairs = [self.make_optimizer([p for m in self.peer_modules(i) for p in m.parameters() if p.requires_grad])
                 for i in self.placement.local_peers]
        return [optimizer for optimizer, _ in pairs], [scheduler for _, scheduler in pairs if scheduler is not None]

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        self.placement.gather_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.placement.local_checkpoint(checkpoint, set(self.state_dict()))

    # ----------------------------------------------------------------- evaluation and export
    def evaluation_outputs(self, x: Tensor) -> tuple[NetOutput, None]:
        self.peer_logits = self.placement.evaluation_logits(x, self.peer_forward)
        return NetOutput(self.peer_logits[0], {}), None

    def validation_step(self, batch, batch_idx):
        _, _, y = self.evaluate(batch, "val")  # peer 0: val/acc, val/acc5, val/loss
        x = self.unpack(batch)[0]
        for i, metric in enumerate(self.peer_val_acc):
            logits = self.peer_logits[i] if i in self.peer_logits else self.peer_forward(i, x).logits
            metric.update(logits, y)
            self.log(f"val/peer{i}/acc", metric)

    def export_peer(self, i: int, path: str) -> None:
        """Save peer ``i`` as a plain state_dict that loads into its architecture."""
        if not 0 <= i < len(self.peers):
            raise IndexError(f"peer index {i} out of range: this DML has {len(self.peers)} peers "
                             f"(0..{len(self.peers) - 1}).")
        if self.peers[i] is None:
            raise ValueError(f"peer {i} is not on this process, which trained peer {self.layout.peer} with placement "
                             f"'peer_parallel': export it from the run's checkpoint, which holds every peer "
                             f"({type(self).__name__}.load_from_checkpoint(path).export_peer({i}, ...)).")
        torch.save(self.peers[i].state_dict(), path)
