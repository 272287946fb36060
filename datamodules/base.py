"""In-memory uint8 datasets, augmented and normalized in batches on the device.

Small datasets (digits, CIFAR, MNIST-like) sit in memory as uint8 tensors. A batch is cut by
indexing (no per-sample Python), moved to the device as uint8 (4x less traffic than float),
then padded-cropped, flipped and normalized there in ``on_after_batch_transfer``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorBatches(Dataset):
    """A dataset of (image, label) tensors whose batches are fetched by one indexing operation.

    With ``with_index`` a batch is ``(images, labels, sample indices)``.
    """

    def __init__(self, images: Tensor, labels: Tensor, with_index: bool = False):
        self.images, self.labels, self.with_index = images, labels, with_index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        item = self.images[index], self.labels[index]
        return (*item, index) if self.with_index else item

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        if self.with_index:
            return self.images[index], self.labels[index], index
        return self.images[index], self.labels[index]


def keep_batch(batch):
    """collate_fn for TensorBatches: the batch is already stacked."""
    return batch


class EpochShuffle(Sampler[int]):
    """The training order: a new permutation every epoch, drawn as torch's ``RandomSampler`` draws it (one
    int64 of the global generator seeds a private one), which keeps its seed and the number of its
    batches trained so far (counted by the datamodule), so that a fit resumed from a checkpoint written
    in the middle of an epoch continues that epoch in the same order (:class:`ResumableLoader`)."""

    def __init__(self, size: int, batch_size: int):
        self.size, self.batch_size = size, batch_size
        self.seed: Optional[int] = None
        self.trained = 0
        self.resume: Optional[tuple[int, int]] = None  # (seed, trained batches) of a checkpoint

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.resume is not None:
            (self.seed, self.trained), self.resume = self.resume, None
        else:
            self.seed, self.trained = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        yield from torch.randperm(self.size, generator=generator)[self.trained * self.batch_size:].tolist()


class ResumableLoader(DataLoader):
    """The training DataLoader of one process, whose position in the epoch Lightning keeps in checkpoints
    (``state_dict``) and restores on resume: the rest of the epoch comes in the original order."""

    epoch_batches = None  # callable: the batches of a full epoch (Lightning's count, limit_train_batches included)

    def state_dict(self) -> dict:
        complete = self.epoch_batches is None or self.sampler.trained >= self.epoch_batches()
        return {"seed": self.sampler.seed, "trained": 0 if complete else self.sampler.trained}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume = (state["seed"], state["trained"]) if state["trained"] else None


def augment(images: Tensor, pad: int, flip: bool) -> Tensor:
    """Zero-pad by ``pad`` and cut a random ``H x W`` window per image, mirrored horizontally with probability
    1/2 when ``flip``: one gather whose column index runs backwards for the flipped images (the same random
    draws, in the same order, and the same pixels as a crop followed by a flip)."""
    n, c, h, w = images.shape
    dev = images.device
    if pad:
        images = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (n,), device=dev).view(n, 1, 1, 1)
        left = torch.randint(0, 2 * pad + 1, (n,), device=dev).view(n, 1, 1, 1)
    else:
        top = left = 0
    cols = torch.arange(w, device=dev)
    if flip:
        mirrored = (torch.rand(n, device=dev) < 0.5).view(n, 1, 1, 1)
        cols = torch.where(mirrored, cols.flip(0), cols)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chans = torch.arange(c, device=dev).view(1, c, 1, 1)
    return images[batch, chans, top + torch.arange(h, device=dev).view(1, 1, h, 1), left + cols]


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [0, 255] -> float, per-channel standardized (``mean``, ``std``: shape (C,) or (C, 1, 1), on the
    images' device or to be moved there)."""
    if mean.dim() == 1:
        mean, std = mean[:, None, None], std[:, None, None]
    return (images.float() / 255.0 - mean.to(images.device)) / std.to(images.device)


class DeviceNormalize:
    """:func:`normalize` with the statistics moved to the batches' device once, not at every batch (on a GPU
    each move is a blocking host-device copy); moved again when given other statistics or another device."""

    def __init__(self):
        self.source: Optional[tuple[Tensor, Tensor, torch.device]] = None
        self.stats: tuple[Tensor, Tensor] = ()

    def __call__(self, images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        source = self.source
        if source is None or source[0] is not mean or source[1] is not std or source[2] != images.device:
            self.source = (mean, std, images.device)
            self.stats = (mean.to(images.device)[:, None, None], std.to(images.device)[:, None, None])
        return normalize(images, *self.stats)


def refuse_mid_epoch_resume(written_mid_epoch: bool, trainer, run: str) -> None:
    """Refuse to go on fitting from a checkpoint written in the middle of an epoch of ``run`` (whose position
    in the epoch cannot be restored); testing, validating or predicting it needs no position."""
    if written_mid_epoch and trainer is not None and trainer.state.fn == "fit":
        raise ValueError(f"this checkpoint was written in the middle of an epoch of {run}: resume from a checkpoint "
                         f"written at an epoch end (for example with val_check_interval: 1.0).")


def per_class_subset(images: Tensor, labels: Tensor, per_class: int) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` samples of every class, in their order; a class with fewer is an error."""
    keep = []
    for label in labels.unique().tolist():
        found = (labels == label).nonzero().flatten()
        if len(found) < per_class:
            raise ValueError(f"train_per_class={per_class}, but class {label} has only {len(found)} training "
                             f"images: lower train_per_class.")
        keep.append(found[:per_class])
    keep = torch.cat(keep).sort().values
    return images[keep], labels[keep]


class InMemoryDataModule(pl.LightningDataModule):
    """Base of the small-data modules. Subclasses set ``num_classes``/``input_shape`` in
    ``__init__`` (the CLI links them into the model) and implement ``load_splits``.

    Args:
        batch_size: training batch size (per process under DDP).
        eval_batch_size: validation/test batch size (default: 2 x batch_size).
        pad: random-crop padding in pixels (0 disables the crop).
        flip: random horizontal flips.
        mean, std: per-channel normalization on the [0, 1] scale (default: from the train split).
        num_workers: DataLoader workers (0 is right for in-memory tensors).
        return_index: training batches are ``(x, y, sample index)``; what a teacher-output cache
            (``cache_teacher_outputs`` of the methods) keys on. A method that needs the indices (CRD)
            switches it on itself (:func:`lightning_kd.batch.check_data_needs`).
        train_per_class: keep only the first this many training images of each class (in the split's
            order), for small-data runs; validation and test splits are untouched. None keeps all.
    """

    num_classes: int
    input_shape: tuple[int, int, int]
    classes: Optional[list[str]] = None  # class names by index (predictions.csv); None: the indices

    def predict_names(self) -> Optional[list[str]]:
        """A name per predicted sample (an image file) in predict's order; None: their numbers."""
        return None

    def __init__(self, batch_size: int = 128, eval_batch_size: Optional[int] = None, pad: int = 4,
                 flip: bool = True, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, num_workers: int = 0, return_index: bool = False,
                 train_per_class: Optional[int] = None):
        super().__init__()
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1 (or null for every image), got {train_per_class}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.pad, self.flip = pad, flip
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)
        self.num_workers = num_workers
        self.return_index = return_index
        self.train_per_class = train_per_class
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.held_out: Optional[tuple[Tensor, Tensor]] = None
        self.shuffle: Optional[EpochShuffle] = None
        self.normalize = DeviceNormalize()

    @property
    def random_augmentation(self) -> bool:
        """Whether training batches are drawn at random (``pad``, ``flip``): what every datamodule declares
        for ``cache_teacher_outputs``, which is valid only when an image is the same tensor every epoch."""
        return bool(self.pad) or bool(self.flip)

    @property
    def train_size(self) -> Optional[int]:
        """The training split's size once set up (what per-sample state is sized by), else None."""
        return len(self.splits["train"][1]) if self.splits else None

    @property
    def train_labels(self) -> Optional[Tensor]:
        """The training split's labels in sample-index order once set up, else None."""
        return self.splits["train"][1] if self.splits else None

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Return ``{"train"|"val"|"test": (uint8 images (N, C, H, W), int64 labels (N,))}``."""
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        for name, (x, y) in splits.items():
            if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(f"{type(self).__name__}.{name}: expected uint8 images of shape "
                                 f"(N, {', '.join(map(str, self.input_shape))}), got {x.dtype} {tuple(x.shape)}")
            if len(x) != len(y):
                raise ValueError(f"{type(self).__name__}.{name}: {len(x)} images but {len(y)} labels")
        if self.train_per_class is not None:
            splits["train"] = per_class_subset(*splits["train"], self.train_per_class)
        self.splits = splits
        if self.mean is None or self.std is None:
            train = splits["train"][0].float() / 255.0
            self.mean = train.mean(dim=(0, 2, 3))
            self.std = train.std(dim=(0, 2, 3)).clamp_min(1e-3)

    def hold_out_of_train(self, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Remove ``count`` training images (a seeded random choice, the same on every process) from
        the training split and return them normalized, with their labels: data for callbacks that
        measure the student on images it never trains on (RCO's greedy anchor choice). Call after
        ``setup`` and before the training loader is built; a second call returns the same images."""
        if not self.splits:
            raise RuntimeError(f"{type(self).__name__}.hold_out_of_train needs the splits: call setup first.")
        if self.held_out is not None:
            if len(self.held_out[1]) != count:
                raise ValueError(f"{len(self.held_out[1])} training images are already held out; cannot hold out "
                                 f"{count} as well.")
            return self.held_out
        x, y = self.splits["train"]
        if not 0 < count < len(y):
            raise ValueError(f"cannot hold out {count} of the {len(y)} training images: give a count between 1 and "
                             f"{len(y) - 1}.")
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        held, kept = order[:count], order[count:].sort().values
        self.splits["train"] = (x[kept], y[kept])
        self.held_out = (normalize(x[held], self.mean, self.std), y[held])
        return self.held_out

    def _loader(self, split: str, train: bool, loader=DataLoader, **kwargs) -> DataLoader:
        x, y = self.splits[split]
        batch = self.batch_size if train else self.eval_batch_size
        # A loader of its own generator: starting an iteration (every validation, a resumed epoch) then draws
        # nothing from the global one, so a resume replays the random augmentation exactly.
        return loader(TensorBatches(x, y, with_index=train and self.return_index), batch_size=batch,
                      drop_last=train and len(y) > batch, collate_fn=keep_batch, num_workers=self.num_workers,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator(), **kwargs)

    def train_dataloader(self):
        if self.trainer is not None and self.trainer.world_size > 1:  # Lightning shards it (DistributedSampler)
            return self._loader("train", True, shuffle=True)
        self.shuffle = EpochShuffle(len(self.splits["train"][1]), self.batch_size)
        loader = self._loader("train", True, ResumableLoader, sampler=self.shuffle)
        loader.epoch_batches = lambda: self.trainer.num_training_batches
        return loader

    def state_dict(self) -> dict:
        # Under DDP the position in an epoch is not restorable: say so on resume instead of guessing.
        trainer = self.trainer
        return {"mid_epoch_ddp": bool(trainer is not None and trainer.world_size > 1 and not trainer.is_last_batch)}

    def load_state_dict(self, state: dict) -> None:
        refuse_mid_epoch_resume(state.get("mid_epoch_ddp", False), self.trainer, "a multi-process (DDP) run, "
                                "where the position in the epoch cannot be restored exactly")

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def predict_dataloader(self):
        return self._loader("test", False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y, *index = batch
        if self.trainer is not None and self.trainer.training:
            if self.shuffle is not None:
                self.shuffle.trained += 1  # a training batch: what a resumed epoch skips
            if self.pad or self.flip:
                x = augment(x, self.pad, self.flip)
        return (self.normalize(x, self.mean, self.std), y, *index)
