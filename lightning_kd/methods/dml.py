"""Deep Mutual Learning: two or more peers teach each other, no pre-trained teacher.

Zhang, Xiang, Hospedales, Lu. "Deep Mutual Learning", CVPR 2018.
https://arxiv.org/abs/1706.00384
"""
from __future__ import annotations

from lightning_kd.base import NetSpec
from lightning_kd.mutual import MutualLearning, mutual_losses


class DML(MutualLearning):
    """Deep Mutual Learning: each peer minimises ``CE + kl_weight * mean_j KL(p_j || p_i)``.

    "Deep Mutual Learning" (Zhang et al., CVPR 2018), https://arxiv.org/abs/1706.00384.
    Two or more peers of any architectures learn together; peer ``j``'s predictions are
    detached targets for peer ``i``. With ``schedule: sequential`` (the paper's Algorithm 1)
    the peers step in turn and each later peer is trained against the *refreshed* predictions
    of the peers that already stepped on this batch (one extra no-grad forward per stepped
    peer); with ``schedule: simultaneous`` (codistillation, Anil et al. 2018) every peer steps
    against the predictions all peers made before this batch's steps. This loop of per-peer
    forwards and steps (:class:`~lightning_kd.mutual.MutualLearning`) replaces the one-direction
    step of the base.

    Which peers step on a batch is decided by :class:`~lightning_kd.callbacks.MutualAlternation`
    (it sets ``stepping_peers``); without it every peer steps on every batch, in order (the paper).

    Optimisation is manual: one optimizer per peer, built by the same ``optimizer`` factory,
    with its own LR scheduler stepped once per epoch. ``trainer.global_step`` counts optimizer
    steps, so it grows by the number of stepping peers per batch (mind ``max_steps``); the
    trainer's ``gradient_clip_val`` is not supported under manual optimisation.

    Multi-GPU (:mod:`lightning_kd.placement`): ``placement: replicated`` (default) holds every peer
    on every rank and averages the stepping peer's gradients and BatchNorm statistics over all of
    them itself (DDP's reducer, which expects one backward over all parameters per forward, is
    blocked); it works with ``strategy="ddp"`` at its default settings. ``placement:
    peer_parallel`` (with ``strategy: peer_parallel``, :mod:`lightning_kd.peer_parallel`): ``W = K x
    D`` ranks, rank ``r`` holds only peer ``r // D`` (``layout``), its optimizer and its share of the
    work; the ranks of a data group exchange the peers' detached outputs (:meth:`shared_output`).
    The same steps as ``replicated`` on the same global batch. Checkpoints hold every peer in both,
    so they resume in either placement and load anywhere with every peer (``load_from_checkpoint``,
    ``export_peer``). After a peer-parallel fit each process keeps its own peer only.

    Peer 0 is ``self.student``: it is what ``val/acc``, ``test/acc``, ``predict`` and
    ``export_student`` use; the others are ``other_peers`` (each peer is held once, and
    ``peers`` lists them all). Every peer is evaluated as ``val/peer{i}/acc``.

    Extension point: override :meth:`peer_losses` to change the mutual term; its names are
    weighted by ``self.loss_weights`` and logged as ``train/peer{i}/<name>``.

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
        super().__init__(peers=peers, schedule=schedule, placement=placement, **kwargs)
        self.loss_weights = {"ce": ce_weight, "kl": kl_weight}

    def peer_losses(self, i, output, others, batch):
        return mutual_losses(output, others, batch.y)
