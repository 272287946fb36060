"""SafeCheckpoints: every checkpoint is read with ``weights_only=True`` and written atomically."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from lightning_kd.checkpoints import SafeCheckpointIO


class SafeCheckpoints(Callback):
    """Installs :class:`~lightning_kd.checkpoints.SafeCheckpointIO` on the Trainer's strategy in
    ``setup``, before Lightning reads ``ckpt_path`` or writes a checkpoint: reads refuse code-running
    pickles whatever the caller asks for, writes never leave a partial file. A custom checkpoint IO of
    the user's is left as it is. Every method adds it through ``configure_callbacks``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
