"""Synthetic images for tests and benchmarks: learnable, any shape, no files."""
from __future__ import annotations

import torch

from lightning_kd.datamodules.base import InMemoryDataModule


class SyntheticDataModule(InMemoryDataModule):
    """Random uint8 images with a class-dependent pattern added, so a network can learn them.

    Args:
        num_classes: number of classes.
        input_shape: ``(C, H, W)``; e.g. ``(3, 32, 32)`` for CIFAR-shaped benchmarks.
        train_size, val_size, test_size: images per split.
        seed: generator seed (the same seed gives the same data).
        **kwargs: see :class:`~lightning_kd.datamodules.base.InMemoryDataModule`.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32),
                 train_size: int = 512, val_size: int = 128, test_size: int = 128, seed: int = 0,
                 batch_size: int = 64, mean: tuple = (0.5,), std: tuple = (0.25,), **kwargs):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        c = self.input_shape[0]
        super().__init__(batch_size=batch_size, mean=list(mean) * (c // len(mean)),
                         std=list(std) * (c // len(std)), **kwargs)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.seed = seed

    def load_splits(self):
        gen = torch.Generator().manual_seed(self.seed)
        patterns = torch.randint(0, 128, (self.num_classes, *self.input_shape), generator=gen)
        splits = {}
        for name, size in self.sizes.items():
            labels = torch.randint(0, self.num_classes, (size,), generator=gen)
            noise = torch.randint(0, 128, (size, *self.input_shape), generator=gen)
            splits[name] = ((patterns[labels] + noise).to(torch.uint8), labels)
        return splits
