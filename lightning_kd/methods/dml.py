"""Deep Mutual Learning: two or more peers teach each other, no pre-trained teacher.

Zhang, Xiang, Hospedales, Lu. "Deep Mutual Learning", CVPR 2018.
https://arxiv.org/abs/1706.00384
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.strategies import ParallelStrategy
from torch import Tensor, nn

from lightning_kd.base import NetSpec, StudentModule, accuracy
from lightning_kd.features import FeatureHooks, NetOutput, example_features
from lightning_kd.losses import dml_loss
from lightning_kd.models import build_network


def average_across_ranks(tensors: Sequence[Tensor]) -> None:
    """In place, replace each tensor by its mean over all processes (one flat all-reduce).

    A no-op outside ``torch.distributed`` or with a single process. Every rank must pass
    tensors of the same shapes in the same order.
    """
    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    with torch.no_grad():
        for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(chunk.view_as(t))


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
    detached targets for peer ``i``. As in the paper's Algorithm 1, the peers step in turn
    and each later peer is trained against the *refreshed* predictions of the peers that
    already stepped on this batch (one extra no-grad forward per stepped peer). This loop of
    per-peer forwards and steps is DML's own: it replaces the one-direction step of the base.

    Which peers step on a batch is decided by :class:`~lightning_kd.callbacks.MutualAlternation`
    (it sets ``stepping_peers``); without it every peer steps on every batch, in order (the paper).

    Optimisation is manual: one optimizer per peer, built by the same ``optimizer`` factory,
    with its own LR scheduler stepped once per epoch. ``trainer.global_step`` counts optimizer
    steps, so it grows by the number of stepping peers per batch (mind ``max_steps``); the
    trainer's ``gradient_clip_val`` is not supported under manual optimisation.

    Multi-GPU: DDP's own gradient reducer expects one backward per forward over all
    parameters, which mutual learning breaks (one backward per peer). DML therefore blocks it
    and averages the stepping peer's gradients itself (one flat ``all_reduce`` per step) and
    its BatchNorm running statistics after the step, so every rank holds identical peers.
    Works with ``strategy="ddp"`` at its default settings (no ``find_unused_parameters``).

    Peer 0 is ``self.student``: it is what ``val/acc``, ``test/acc``, ``predict`` and
    ``export_student`` use; the others are ``other_peers`` (each peer is held once, and
    ``peers`` lists them all). Every peer is evaluated as ``val/peer{i}/acc``.

    Extension point: override :meth:`peer_losses` to change the mutual term (e.g. IE-DML);
    its names are weighted by ``self.loss_weights`` and logged as ``train/peer{i}/<name>``.

    Args:
        peers: two or more network specs (same forms as ``student`` in the base class).
        ce_weight: weight of each peer's cross-entropy with the labels.
        kl_weight: weight of the mean KL to the other peers.
        **kwargs: ``num_classes``, ``input_shape``, ``optimizer``, ``lr_scheduler``; see
            :class:`~lightning_kd.base.StudentModule`.
    """

    def __init__(self, peers: list[NetSpec], ce_weight: float = 1.0, kl_weight: float = 1.0, **kwargs):
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

    @property
    def peers(self) -> tuple[nn.Module, ...]:
        """Every peer, peer 0 (the student) first."""
        return (self.student, *self.other_peers)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # compiles peer 0 (the student) when asked
        if stage == "fit" and self.compile_networks:
            for peer in self.other_peers:
                peer.compile()

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
            others: ``{j: detached output of peer j}`` for every other peer; refreshed for
                peers that already stepped on this batch.
            batch: the ``(x, y)`` batch.
        """
        mimicry = torch.stack([dml_loss(output.logits, other.logits) for other in others.values()]).mean()
        return {"ce": F.cross_entropy(output.logits, batch[1]), "kl": mimicry}

    # ----------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x, y, _ = self.unpack(batch)
        order = list(range(len(self.peers)) if self.stepping_peers is None else self.stepping_peers)
        outputs = {}
        for i, peer in enumerate(self.peers):
            if i in order:  # its training forward: the graph waits for its turn
                outputs[i] = self.peer_forward(i, x)
            else:
                with torch.no_grad(), buffers_kept(peer):
                    outputs[i] = self.peer_forward(i, x)
        optimizers = self.optimizers()
        totals = []
        for n, i in enumerate(order):
            others = {j: detached(out) for j, out in outputs.items() if j != i}
            total = self.weighted_total(self.peer_losses(i, outputs[i], others, (x, y)), len(x), prefix=f"peer{i}/")
            self.step_peer(i, optimizers[i], total)
            totals.append(total.detach())
            if n < len(order) - 1:  # later peers learn from this peer's updated predictions
                with torch.no_grad(), buffers_kept(self.peers[i]):
                    outputs[i] = self.peer_forward(i, x)
        self.log("train/loss", torch.stack(totals).mean(), on_step=True, on_epoch=False, batch_size=len(x))

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
        average_across_ranks([p.grad for p in peer.parameters() if p.grad is not None])
        optimizer.step()
        average_across_ranks([b for b in peer.buffers() if b.is_floating_point()])

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    def configure_optimizers(self):
        pairs = [self.make_optimizer([p for m in self.peer_modules(i) for p in m.parameters() if p.requires_grad])
                 for i in range(len(self.peers))]
        return [optimizer for optimizer, _ in pairs], [scheduler for _, scheduler in pairs if scheduler is not None]

    # ----------------------------------------------------------------- evaluation and export
    def validation_step(self, batch, batch_idx):
        student, _, y = self.evaluate(batch, "val")  # peer 0: val/acc, val/acc5, val/loss
        x = self.unpack(batch)[0]
        for i, metric in enumerate(self.peer_val_acc):
            metric.update(student.logits if i == 0 else self.peer_forward(i, x).logits, y)
            self.log(f"val/peer{i}/acc", metric)

    def export_peer(self, i: int, path: str) -> None:
        """Save peer ``i`` as a plain state_dict that loads into its architecture."""
        if not 0 <= i < len(self.peers):
            raise IndexError(f"peer index {i} out of range: this DML has {len(self.peers)} peers (0..{len(self.peers) - 1}).")
        torch.save(self.peers[i].state_dict(), path)
