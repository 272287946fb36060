"""CIFAR-10 and CIFAR-100 through torchvision, held in memory as uint8."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lightning_kd.datamodules.base import InMemoryDataModule


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 (Krizhevsky, 2009): 50,000 train / 10,000 test images, 32x32, 10 classes.

    Args:
        root: folder holding (or to receive) torchvision's ``cifar-10-batches-py``.
        download: download the archive when absent (needs network).
        val_size: images held out of train for validation; 0 (the KD papers' convention)
            validates on the test set.
        **kwargs: see :class:`~lightning_kd.datamodules.base.InMemoryDataModule` (pad 4 + flip by default).
    """

    num_classes = 10
    input_shape = (3, 32, 32)
    folder = "cifar-10-batches-py"
    files = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
    mean_std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

    def __init__(self, root: str = "data", download: bool = False, val_size: int = 0, **kwargs):
        kwargs.setdefault("mean", self.mean_std[0])
        kwargs.setdefault("std", self.mean_std[1])
        super().__init__(**kwargs)
        self.root, self.download, self.val_size = root, download, val_size
        missing = [f for f in self.files if not (Path(root) / self.folder / f).is_file()]
        if missing and not download:
            raise FileNotFoundError(
                f"{type(self).__name__}: {len(missing)} file(s) missing under "
                f"{str(Path(root) / self.folder)!r}: {missing}. Expected torchvision's python-version "
                f"archive extracted there. Set `data.init_args.download: true` (needs network) "
                f"or `data.init_args.root` to the folder that holds {self.folder!r}.")

    def _dataset(self, train: bool):
        from torchvision import datasets

        cls = datasets.CIFAR10 if self.num_classes == 10 else datasets.CIFAR100
        return cls(self.root, train=train, download=self.download)

    def prepare_data(self):
        if self.download:  # once per node, before setup on every process
            self._dataset(True), self._dataset(False)

    def load_splits(self):
        def tensors(train):
            ds = self._dataset(train)
            images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
            return images, torch.tensor(ds.targets, dtype=torch.long)

        (x, y), test = tensors(True), tensors(False)
        if not self.val_size:
            return {"train": (x, y), "val": test, "test": test}
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        val, train = order[: self.val_size], order[self.val_size:]
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": test}


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50,000 train / 10,000 test images, 32x32, 100 classes. Same arguments as CIFAR-10."""

    num_classes = 100
    folder = "cifar-100-python"
    files = ("train", "test")
    mean_std = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
