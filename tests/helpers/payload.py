"""What a crafted file would name to run code: importing this module, or calling anything in it, writes the
file named by ``$LIGHTNING_KD_TEST_MARKER``. The tests name it in checkpoints and shards and check the file
never appears (and that this module is never imported)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from helpers import MARKER_VARIABLE


def leave_marker(what: str) -> None:
    path = os.environ.get(MARKER_VARIABLE)
    if path:
        Path(path).write_text(what)


leave_marker("imported")


def marker_network(num_classes: int = 10, in_channels: int = 3, **kwargs):
    """A network constructor (small_cnn width 4) that leaves the marker: a callable no file may name."""
    from lightning_kd.models import small_cnn

    leave_marker("called")
    return small_cnn(num_classes=num_classes, in_channels=in_channels, width=4)


class MarkerOptimizer(torch.optim.SGD):
    def __init__(self, *args, **kwargs):
        leave_marker("called")
        super().__init__(*args, **kwargs)
