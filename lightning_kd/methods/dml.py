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
from torchmetrics.classification import MulticlassAccuracy

from lightning_kd.base import DistillationModule, NetSpec
from lightning_kd.models import build_network


def dml_loss(logits: Tensor, peer_logits: Tensor) -> Tensor:
    """``KL(softmax(peer) || softmax(logits))``, averaged over the batch; the peer is detached.

    The mimicry term of Deep Mutual Learning (Zhang et al., eq. 2). Computed in float32
    whatever the autocast dtype.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_peer = F.log_softmax(peer_logits.detach().float(), dim=1)
    return F.kl_div(log_p, log_p_peer, reduction="batchmean", log_target=True)


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


class DML(DistillationModule):
    """Deep Mutual Learning: each peer minimises ``CE + kl_weight * mean_j KL(p_j || p_i)``.

    "Deep Mutual Learning" (Zhang et al., CVPR 2018), https://arxiv.org/abs/1706.00384.
    Two or more peers of any architectures learn together; peer ``j``'s predictions are
    detached targets for peer ``i``. As in the paper's Algorithm 1, the peers step in turn
    and each later peer is trained against the *refreshed* predictions of the peers that
    already stepped on this batch (one extra no-grad forward per stepped peer).

    Which peers step on a batch is decided by :class:`lightning_kd.callbacks.MutualAlternation` (it sets
    ``stepping_peers``); without it every peer steps on every batch, in order (the paper).

    Optimisation is manual: one optimizer per peer, built by the same ``optimizer`` factory,
    with its own LR scheduler stepped once per epoch. ``trainer.global_step`` counts optimizer
    steps, so it grows by the number of stepping peers per batch (mind ``max_steps``); the
    trainer's ``gradient_clip_val`` is not supported under manual optimisation.

    Multi-GPU: DDP's own gradient reducer expects one backward per forward over all
    parameters, which mutual learning breaks (one backward per peer). DML therefore blocks it
    and averages the stepping peer's gradients itself (one flat ``all_reduce`` per step) and
    its BatchNorm running statistics after the step, so every rank holds identical peers.
    Works with ``strategy="ddp"`` at its default settings (no ``find_unused_parameters``).

    ``self.student`` is peer 0: it is what ``val/acc``, ``test/acc``, ``predict`` and
    ``export_student`` use. Every peer is evaluated as ``val/peer{i}/acc``.

    Extension point: override :meth:`peer_losses` to change the mutual term (e.g. IE-DML);
    its names are weighted by ``self.loss_weights`` and logged as ``train/peer{i}/<name>``.

    Args:
        peers: two or more network specs (same forms as ``student`` in the base class).
        ce_weight: weight of each peer's cross-entropy with the labels.
        kl_weight: weight of the mean KL to the other peers.
        **kwargs: ``num_classes``, ``input_shape``, ``optimizer``, ``lr_scheduler``; see
            :class:`~lightning_kd.base.DistillationModule`.
    """

    uses_teacher = False

    def __init__(self, peers: list[NetSpec], ce_weight: float = 1.0, kl_weight: float = 1.0, **kwargs):
        if isinstance(peers, (str, dict)) or len(peers) < 2:
            raise ValueError(f"DML trains two or more peers together; got peers={peers!r}. Give a list, "
                             f"e.g. peers: [{{name: small_cnn, width: 4}}, {{name: small_cnn, width: 8}}].")
        if "student" in kwargs:
            raise ValueError("DML takes `peers`, not `student`: peer 0 is the student.")
        super().__init__(student=peers[0], **kwargs)
        # Keep DML's own arguments, not the base's `student`, so load_from_checkpoint works.
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "student", "teacher", "teacher_ckpt"])
        self.automatic_optimization = False
        others = [build_network(spec, self.num_classes, self.input_shape[0]) for spec in peers[1:]]
        self.peers = nn.ModuleList([self.student, *others])
        self.peer_val_acc = nn.ModuleList(
            MulticlassAccuracy(self.num_classes, top_k=1, average="micro") for _ in self.peers)
        self.loss_weights = {"ce": ce_weight, "kl": kl_weight}
        #: Indices of the peers that step on the current batch, in order; None = all of them.
        self.stepping_peers: Optional[Sequence[int]] = None

    # ----------------------------------------------------------------- the mutual term
    def peer_losses(self, i: int, logits: Tensor, peer_logits: dict[int, Tensor],
                    batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Unweighted losses of peer ``i``.

        Args:
            i: index of the peer that steps.
            logits: its logits, with autograd.
            peer_logits: ``{j: detached logits of peer j}`` for every other peer; refreshed for
                peers that already stepped on this batch.
            batch: the ``(x, y)`` batch.
        """
        mimicry = torch.stack([dml_loss(logits, other) for other in peer_logits.values()]).mean()
        return {"ce": F.cross_entropy(logits, batch[1]), "kl": mimicry}

    # ----------------------------------------------------------------- training
    def distill_losses(self, batch):
        raise TypeError("DML optimises its peers one by one in training_step; use peer_losses(...).")

    def training_step(self, batch, batch_idx):
        x = batch[0]
        order = list(range(len(self.peers)) if self.stepping_peers is None else self.stepping_peers)
        logits = {}
        for i, peer in enumerate(self.peers):
            if i in order:  # its training forward: the graph waits for its turn
                logits[i] = peer(x)
            else:
                with torch.no_grad(), buffers_kept(peer):
                    logits[i] = peer(x)
        optimizers = self.optimizers()
        totals = []
        for n, i in enumerate(order):
            others = {j: out.detach() for j, out in logits.items() if j != i}
            losses = self.peer_losses(i, logits[i], others, batch)
            total = self.weighted_total(losses, x.shape[0], prefix=f"peer{i}/")
            self.step_peer(i, optimizers[i], total)
            totals.append(total.detach())
            if n < len(order) - 1:  # later peers learn from this peer's updated predictions
                with torch.no_grad(), buffers_kept(self.peers[i]):
                    logits[i] = self.peers[i](x)
        self.log("train/loss", torch.stack(totals).mean(), on_step=True, on_epoch=False, batch_size=x.shape[0])

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
        super().on_train_epoch_end()  # the pending non-finite loss checks
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()

    def configure_optimizers(self):
        pairs = [self.make_optimizer([p for m in self.peer_modules(i) for p in m.parameters() if p.requires_grad])
                 for i in range(len(self.peers))]
        return [optimizer for optimizer, _ in pairs], [scheduler for _, scheduler in pairs if scheduler is not None]

    # ----------------------------------------------------------------- evaluation
    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)  # peer 0: val/acc, val/acc5, val/loss
        x, y = batch
        for i, (peer, metric) in enumerate(zip(self.peers, self.peer_val_acc)):
            metric.update(peer(x), y)
            self.log(f"val/peer{i}/acc", metric)

    # ----------------------------------------------------------------- checkpoints
    # Peer 0 is also registered as `student`; the checkpoint keeps one copy (under peers.0).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith("student.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for k in [k for k in state if k.startswith("peers.0.")]:
            state.setdefault("student." + k[len("peers.0."):], state[k])

    def export_peer(self, i: int, path: str) -> None:
        """Save peer ``i`` as a plain state_dict that loads into its architecture."""
        if not 0 <= i < len(self.peers):
            raise IndexError(f"peer index {i} out of range: this DML has {len(self.peers)} peers (0..{len(self.peers) - 1}).")
        torch.save(self.peers[i].state_dict(), path)
