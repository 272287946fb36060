"""MutualAlternation: which peers of a mutual-learning method step on each batch."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

MODES = ("step", "every_k", "epoch")


class MutualAlternation(Callback):
    """The alternation schedule of Deep Mutual Learning (Zhang et al., CVPR 2018, Algorithm 1).

    "Deep Mutual Learning", https://arxiv.org/abs/1706.00384. Before every training batch it
    sets ``pl_module.stepping_peers``, the peers that step on that batch, in order:

    - ``"step"``: every peer on every batch, peer 0 first, each later peer trained against the
      refreshed predictions of the earlier ones (the paper).
    - ``"every_k"``: one peer at a time; the turn passes to the next peer (round-robin) every
      ``k`` batches: batches ``0..k-1`` peer 0, ``k..2k-1`` peer 1, ...
    - ``"epoch"``: one peer per epoch, round-robin: epoch ``e`` trains peer ``e % num_peers``.

    The schedule depends only on the batch count and the epoch, which are the same on every
    DDP rank, so all ranks step the same peer. The batch count is saved in checkpoints, so a
    resumed run continues on the right turn. Works with any module that has ``peers`` and
    ``stepping_peers`` (:class:`lightning_kd.methods.DML` and its subclasses).

    Args:
        mode: ``"step"``, ``"every_k"`` or ``"epoch"``.
        k: batches per turn in ``"every_k"`` mode (>= 1).
    """

    def __init__(self, mode: str = "step", k: int = 1):
        if mode not in MODES:
            raise ValueError(f"MutualAlternation mode must be one of {MODES}, got {mode!r}.")
        if int(k) != k or k < 1:
            raise ValueError(f"MutualAlternation k must be a positive integer, got {k!r}.")
        if k != 1 and mode != "every_k":
            raise ValueError(f"k={k} is only used by mode='every_k'; set mode='every_k' or drop k.")
        self.mode = mode
        self.k = int(k)
        self.batches_seen = 0

    def turn(self, num_peers: int, epoch: int) -> tuple[int, ...]:
        """The peers that step on the next batch."""
        if self.mode == "step":
            return tuple(range(num_peers))
        if self.mode == "every_k":
            return ((self.batches_seen // self.k) % num_peers,)
        return (epoch % num_peers,)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not (hasattr(pl_module, "peers") and hasattr(pl_module, "stepping_peers")):
            raise TypeError(f"MutualAlternation schedules mutual-learning peers, but "
                            f"{type(pl_module).__name__} has no `peers`; use it with "
                            f"lightning_kd.methods.DML (or a subclass), or remove the callback.")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pl_module.stepping_peers = self.turn(len(pl_module.peers), trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches_seen += 1

    def state_dict(self) -> dict:
        return {"batches_seen": self.batches_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.batches_seen = int(state_dict["batches_seen"])
