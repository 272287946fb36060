"""The record of a peer-parallel fit's processes, for tests in this process and fits through the CLI
(``--trainer.callbacks+=helpers.peer_record.RankRecord``, with ``tests`` on ``PYTHONPATH``)."""
from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback


class RankRecord(Callback):
    """Saves, per rank, every peer before the fit, the batches it trained on, its peer at the end and the
    validation metrics."""

    def __init__(self, out: str, name: str):
        self.out, self.name, self.batches = Path(out), name, []

    def setup(self, trainer, pl_module, stage):  # before the module keeps only its own peer
        if stage != "fit":
            return
        self.path = self.out / f"{self.name}.rank{trainer.global_rank}.pt"
        torch.save(pl_module.state_dict(), self.path.with_suffix(".initial.pt"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))

    def on_train_end(self, trainer, pl_module):
        peer = pl_module.layout.peer
        try:
            pl_module.export_peer(1 - peer, self.path.with_suffix(".other.pt"))
            refusal = None
        except ValueError as error:
            refusal = str(error)
        torch.save({"peer": peer, "data_group": pl_module.layout.data_group, "batches": self.batches,
                    "final": pl_module.state_dict(), "refusal": refusal,
                    "global_step": trainer.global_step,
                    "metrics": {k: v.item() for k, v in trainer.callback_metrics.items()}},
                   self.path)
