"""SafeLoading: a resumed fit reads its checkpoint with ``weights_only=True``, whatever the caller or the
torch version's default asks for."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from lightning_kd.checkpoints import SafeCheckpointIO


class SafeLoading(Callback):
    """Installs :class:`~lightning_kd.checkpoints.SafeCheckpointIO` on the Trainer's strategy in
    ``setup``, before Lightning reads ``ckpt_path``; a custom checkpoint IO of the user's is left as
    it is. Every method adds it through ``configure_callbacks``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
