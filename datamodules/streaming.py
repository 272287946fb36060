"""ImageNet-scale data: an ImageFolder tree converted once into litdata shards, then streamed.

``python -m lightning_kd.tools.shards ROOT OUT`` (:func:`lightning_kd.tools.shards.convert_tree`) writes
every split's files, as their original encoded bytes, into ``OUT/<split>/`` shards and ``OUT/shards.json``
(class names, sample counts, a fingerprint of the tree). :class:`StreamingImageDataModule` streams them: DataLoader workers
decode and crop (the standard ImageNet transforms), the device normalizes, and litdata gives every DDP
rank and node its own part of each epoch and keeps the loader's position in the checkpoint.
"""
from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch

from lightning_kd.compat import epochs_begun
from lightning_kd.datamodules.base import DeviceNormalize, refuse_mid_epoch_resume
from lightning_kd.datamodules.image_folder import PIL_FORMATS, to_8bit

# What the converter (lightning_kd.tools.shards) writes and this module reads. Bump SHARD_FORMAT when what a
# shard holds changes: shards of another format are refused, not misread.
SHARD_FORMAT = 1
# What convert_tree's records declare in a split's index.json: (index, label, encoded image bytes), each
# field read by litdata's serializer of that name, uncompressed and unencrypted.
SHARD_CONFIG = {"data_format": ["int", "int", "bytes"], "compression": None, "encryption": None,
                "item_loader": "PyTreeLoader"}
META_FILE = "shards.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVERT_HINT = "convert the tree first: python -m lightning_kd.tools.shards ROOT OUT"


def litdata():
    try:
        import litdata as ld
    except ImportError:
        raise ImportError("streaming data needs litdata: pip install 'lightning_kd[streaming]' "
                          "(or pip install litdata).") from None
    return ld


def check_shard_index(split_dir: Path) -> None:
    """Refuse, before litdata reads a byte of them, shards that are not what :func:`convert_tree` writes
    (:data:`SHARD_CONFIG`, chunk files inside the folder): litdata decodes every field with the serializer
    its ``index.json`` names, and one of them unpickles, which runs whatever the file holds."""
    path = split_dir / "index.json"
    try:
        index = json.loads(path.read_text())
        config, chunks = index["config"] or {}, [c["filename"] for c in index["chunks"]]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{str(path)!r} is not a litdata shard index ({type(err).__name__}: {err}); "
                         f"{CONVERT_HINT} --overwrite.") from None
    declared = {key: config.get(key, None if key != "item_loader" else "PyTreeLoader") for key in SHARD_CONFIG}
    outside = [c for c in chunks if not isinstance(c, str) or Path(c).name != c]
    if declared != SHARD_CONFIG or outside:
        differs = {k: v for k, v in declared.items() if v != SHARD_CONFIG[k]}
        raise ValueError(f"the shards in {str(split_dir)!r} are not the converter's (they declare "
                         f"{differs or f'chunk files outside the folder: {outside[:3]}'}, where "
                         f"lightning_kd.tools.shards writes {SHARD_CONFIG}) and were not read: some formats run "
                         f"code when read (pickle). Convert the image tree into a new folder: python -m "
                         f"lightning_kd.tools.shards ROOT OUT.")


class DecodeImage:
    """Worker-side decode of one shard record to ``(uint8 image (3, S, S), label, index)``: training
    takes a random resized crop and a random flip, evaluation resizes the short side to ``resize`` and
    takes the center ``image_size`` square (the standard ImageNet transforms)."""

    def __init__(self, train: bool, image_size: int, resize: int):
        from torchvision.transforms import v2

        steps = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()] if train else \
            [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
        self.transform = v2.Compose([v2.PILToTensor(), *steps])

    def __call__(self, record: dict):
        from PIL import Image

        with Image.open(io.BytesIO(record["image"]), formats=PIL_FORMATS) as img:
            image = self.transform(to_8bit(img).convert("RGB"))
        return image, record["label"], record["index"]


@functools.cache
def epoch_following_loader() -> type:
    """litdata's ``StreamingDataLoader`` whose epoch (which orders its shuffle) is the trainer's.

    litdata counts epochs in the loader, from 0 in a new process: a fit resumed after an epoch ended would
    replay the first epoch's order. A checkpoint of the middle of an epoch restores the count itself.
    """
    class EpochFollowingLoader(litdata().StreamingDataLoader):
        trainer: Optional[pl.Trainer] = None

        def __iter__(self):
            if self.trainer is not None and not self.restore:
                self.current_epoch = epochs_begun(self.trainer)  # litdata adds 1 as the epoch starts
            return super().__iter__()

    return EpochFollowingLoader


def strategy_sharding(trainer: Optional[pl.Trainer]) -> Optional[dict]:
    """The parts the trainer's strategy shards data into (Lightning's ``distributed_sampler_kwargs``:
    ``num_replicas`` and this process's ``rank``), or None for a strategy that does not shard."""
    return getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None)


def shard_as_the_strategy(dataset, trainer: Optional[pl.Trainer]) -> None:
    """Give ``dataset`` (a litdata ``StreamingDataset``) the parts the trainer's strategy shards data into.

    litdata splits an epoch between the processes of ``torch.distributed``; a strategy may shard otherwise
    (``peer_parallel``: one part per data group, whose processes must read the same samples). The parts are
    Lightning's ``distributed_sampler_kwargs``; where they differ from litdata's own, they replace them
    (with one node: litdata's per-node chunk bookkeeping then spans every process, which only matters for
    a remote cache).
    """
    sharding = strategy_sharding(trainer)
    if not sharding:
        return
    parts, part = sharding["num_replicas"], sharding["rank"]
    env = dataset.distributed_env
    if (parts, part) != (env.world_size, env.global_rank):
        dataset.distributed_env = type(env)(world_size=parts, global_rank=part, num_nodes=1)


class StreamingImageDataModule(pl.LightningDataModule):
    """Large ImageFolder trees, converted once into shards (``python -m lightning_kd.tools.shards``), streamed.

    The shards are written by :func:`lightning_kd.tools.shards.convert_tree` and read with litdata.

    Training batches come in a new order every epoch (``seed`` and the epoch fix it); under DDP, every rank
    and node reads its own part of it. The training loader's position is saved in checkpoints and
    restored on resume, so a fit resumed mid-epoch trains on the rest of that epoch (litdata's state; it
    also takes another ``batch_size`` or ``num_workers``). Images are decoded and cropped by the loader's
    workers and normalized on the device.

    Args:
        root: the shard folder (``OUT`` of the conversion, holding ``shards.json``).
        train_split, val_split, test_split: converted split names (ImageNet: validate and test on ``val``).
        batch_size: training batch size per process; eval_batch_size: validation/test (default: batch_size).
        image_size: side of the crops; resize: evaluation's short side before the center crop.
        num_workers: decoding worker processes per process.
        mean, std: per-channel normalization on the [0, 1] scale (default: ImageNet's).
        return_index: training batches are ``(x, y, sample index in the split)`` (switched on by a method
            that needs the indices, as CRD).
        seed: the shuffling seed.
    """

    def __init__(self, root: str, train_split: str = "train", val_split: str = "val", test_split: str = "val",
                 batch_size: int = 256, eval_batch_size: Optional[int] = None, image_size: int = 224,
                 resize: int = 256, num_workers: int = 8, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, return_index: bool = False, seed: int = 0):
        super().__init__()
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"StreamingImageDataModule: no {META_FILE} in {str(self.root)!r}: {CONVERT_HINT} "
                                    f"(and set data.init_args.root to OUT).")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != SHARD_FORMAT:
            raise ValueError(f"the shards in {str(self.root)!r} are of format {meta.get('format')}, this version "
                             f"reads format {SHARD_FORMAT}: {CONVERT_HINT} --overwrite.")
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        for split, name in self.splits.items():
            if name not in meta["splits"] or not (self.root / name / "index.json").is_file():
                raise ValueError(f"StreamingImageDataModule: {split} split {name!r} is not converted in "
                                 f"{str(self.root)!r} (converted: {sorted(meta['splits'])}); {CONVERT_HINT} "
                                 f"--splits ... {name}, or set data.init_args.{split}_split.")
            check_shard_index(self.root / name)
        if batch_size < 1 or image_size < 1 or resize < image_size:
            raise ValueError(f"need batch_size >= 1 and resize >= image_size >= 1, got batch_size={batch_size}, "
                             f"image_size={image_size}, resize={resize}.")
        self.classes = meta["classes"]
        self.num_classes = len(self.classes)
        self.input_shape = (3, image_size, image_size)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.image_size, self.resize, self.num_workers = image_size, resize, num_workers
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.return_index, self.seed = return_index, seed
        self.normalize = DeviceNormalize()
        #: The training split's size (the converter's count; what per-sample state is sized by).
        self.train_size = int(meta["splits"][train_split]["count"])

    #: The training labels are inside the shards, not read ahead: methods that need them are refused.
    train_labels = None

    #: Training batches are random resized crops and flips: cached teacher outputs would be of other crops.
    random_augmentation = True

    def _loader(self, split: str, train: bool):
        ld = litdata()
        dataset = ld.StreamingDataset(str(self.root / self.splits[split]), shuffle=train, drop_last=train,
                                      seed=self.seed, transform=DecodeImage(train, self.image_size, self.resize))
        shard_as_the_strategy(dataset, self.trainer)
        loader = epoch_following_loader()(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                                          drop_last=train)
        loader.trainer = self.trainer
        return loader

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    predict_dataloader = test_dataloader

    def state_dict(self) -> dict:
        # litdata restores a position saved for its own split of the epoch (one part per process); where the
        # strategy shards by other parts (peer_parallel: one per data group), its resume does not know them (it
        # re-stripes the epoch for every process), so a resume in the middle of such an epoch is refused, not
        # guessed.
        sharding = strategy_sharding(self.trainer)
        regrouped = bool(sharding) and sharding["num_replicas"] != self.trainer.world_size
        return {"mid_epoch_peer_parallel": regrouped and not self.trainer.is_last_batch}

    def load_state_dict(self, state: dict) -> None:
        refuse_mid_epoch_resume(state.get("mid_epoch_peer_parallel", False), self.trainer, "a peer-parallel run, "
                                "whose data groups stream different parts of the epoch and cannot all be restored "
                                "from one position")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y, index = batch
        x = self.normalize(x, self.mean, self.std)
        training = self.trainer is not None and self.trainer.training
        return (x, y, index) if training and self.return_index else (x, y)
