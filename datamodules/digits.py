"""The embedded default dataset: scikit-learn's bundled handwritten digits (no download)."""
from __future__ import annotations

import torch

from lightning_kd.datamodules.base import InMemoryDataModule


class DigitsDataModule(InMemoryDataModule):
    """UCI handwritten digits as shipped inside scikit-learn: 1,797 real 8x8 grey images, 10 classes.

    A fixed split (seeded permutation): 1,257 train / 180 val / 360 test. Augmentation defaults
    to a 1-pixel pad-crop and no flips (a mirrored digit is another symbol).

    Args:
        split_seed: seed of the fixed train/val/test permutation.
        **kwargs: see :class:`~lightning_kd.datamodules.base.InMemoryDataModule`.
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    sizes = {"val": 180, "test": 360}

    def __init__(self, batch_size: int = 64, pad: int = 1, flip: bool = False, split_seed: int = 0, **kwargs):
        super().__init__(batch_size=batch_size, pad=pad, flip=flip, **kwargs)
        self.split_seed = split_seed

    def load_splits(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Pixel values are 0..16; spread them over the uint8 range.
        images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
        labels = torch.from_numpy(digits.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        n_val, n_test = self.sizes["val"], self.sizes["test"]
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        return {name: (images[idx], labels[idx]) for name, idx in parts.items()}
