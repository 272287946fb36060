"""RNGState: the random generators travel with the checkpoint, so a resumed fit draws the same
shuffles and augmentations as an uninterrupted one."""
from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


def collect_rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python generator states, as tensors and plain types (they load
    with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
              "python": random.getstate()}
    if torch.cuda.is_available():  # this process's device: a checkpoint written by rank 0 is restored on every rank
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every device's state, rank 0's device first
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda)  # onto this process's device: every rank then draws as rank 0 drew


class RNGState(Callback):
    """Saves the torch/CUDA/numpy/Python generator states in every checkpoint and restores them when a
    fit resumes from one (not when a checkpoint is only tested). Every method adds it through
    ``configure_callbacks``."""

    def __init__(self):
        self.fitting = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.fitting = stage == "fit"

    def state_dict(self) -> dict:
        return collect_rng_states()

    def load_state_dict(self, state_dict: dict) -> None:
        if self.fitting:  # Lightning restores callbacks before the first batch is drawn
            restore_rng_states(state_dict)
