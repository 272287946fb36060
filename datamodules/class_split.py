"""Disjoint train and retrieval classes for metric learning (zero-shot retrieval)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_kd.datamodules.base import InMemoryDataModule


def select_classes(images: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The samples of ``classes``, relabelled ``0..len(classes)-1`` in the order given."""
    lookup = torch.full((max(int(labels.max()), *classes) + 1,), -1, dtype=torch.long)
    lookup[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    new_labels = lookup[labels]
    keep = new_labels >= 0
    return images[keep], new_labels[keep]


class ClassSplitDataModule(InMemoryDataModule):
    """Metric learning on another in-memory datamodule: train on some classes, retrieve others.

    Training batches hold the ``source``'s training images of ``train_classes``; validation and
    test both hold the ``source``'s test images of ``test_classes``, classes never seen in
    training (as the CUB/Cars protocol of "Relational Knowledge Distillation", Park et al., CVPR
    2019, https://arxiv.org/abs/1904.05068). Labels are renumbered from 0 within each side.
    Augmentation (pad, flip), normalization and workers are the source's.

    Args:
        source: the datamodule whose splits are divided (CIFAR-10, digits, ...).
        train_classes: the source's class indices used for training.
        test_classes: the source's class indices used for retrieval; disjoint from ``train_classes``.
        batch_size: training batch size (per process under DDP).
        eval_batch_size: retrieval batch size (default: 2 x batch_size).
    """

    def __init__(self, source: InMemoryDataModule, train_classes: Sequence[int] = (0, 1, 2, 3, 4),
                 test_classes: Sequence[int] = (5, 6, 7, 8, 9), batch_size: int = 64,
                 eval_batch_size: Optional[int] = None):
        train_classes, test_classes = [int(c) for c in train_classes], [int(c) for c in test_classes]
        for name, classes in (("train_classes", train_classes), ("test_classes", test_classes)):
            if len(classes) < 2 or len(set(classes)) != len(classes):
                raise ValueError(f"{name} must list at least 2 distinct classes, got {classes}")
            bad = [c for c in classes if not 0 <= c < source.num_classes]
            if bad:
                raise ValueError(f"{name} {bad} are not classes of {type(source).__name__} "
                                 f"(0..{source.num_classes - 1})")
        shared = sorted(set(train_classes) & set(test_classes))
        if shared:
            raise ValueError(f"train_classes and test_classes share {shared}; retrieval must be on "
                             f"classes never seen in training.")
        self.source = source
        self.train_classes, self.test_classes = train_classes, test_classes
        self.num_classes = len(train_classes)
        self.input_shape = tuple(source.input_shape)
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, pad=source.pad, flip=source.flip,
                         mean=None if source.mean is None else source.mean.tolist(),
                         std=None if source.std is None else source.std.tolist(), num_workers=source.num_workers)

    def prepare_data(self):
        self.source.prepare_data()

    def load_splits(self):
        splits = self.source.load_splits()
        retrieval = select_classes(*splits["test"], self.test_classes)
        return {"train": select_classes(*splits["train"], self.train_classes), "val": retrieval,
                "test": retrieval}
