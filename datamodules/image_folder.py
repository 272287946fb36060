"""A generic ImageFolder datamodule (``root/<split>/<class>/<image>``), decoded once into memory.

Decoded splits are cached as uint8 tensors (see :class:`ImageFolderDataModule`), so only the first
run over a tree pays for JPEG decoding.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from lightning_kd.checkpoints import atomic_save
from lightning_kd.datamodules.base import InMemoryDataModule

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
# The PIL decoders of those extensions, the only ones asked to open a file: PIL detects a format by content,
# and some (EPS, through Ghostscript) run what a file says.
PIL_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "DIB", "TIFF", "WEBP")


def to_8bit(img):
    """16-bit greyscale (PIL modes ``I;16*``, or ``I`` holding values above 255) scaled to 8 bits;
    PIL's own conversion saturates those to white. 32-bit float greyscale (mode ``F``, float TIFFs) is
    read on the [0, 1] scale of float images and scaled to 0..255 (PIL's conversion clips it, so it
    comes out black); a float image with values outside [0, 1] or non-finite ones is an error, as its
    scale is unknown. Other images pass unchanged."""
    from PIL import Image

    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError(f"it is a 32-bit float image with values in [{values.min():g}, {values.max():g}]: "
                             f"float images are read on the [0, 1] scale; save it with values in [0, 1], or as "
                             f"an 8- or 16-bit image")
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8), mode="L")
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    values = np.asarray(img, dtype=np.float64)
    full = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8), mode="L")


def class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def images_under(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files, other files) under ``folder``, sorted; hidden files are skipped."""
    files = [f for f in sorted(folder.rglob("*")) if not f.is_dir() and not f.name.startswith(".")]
    return ([f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS],
            [str(f) for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS])


def refuse_strays(strays: list[str], folder: Path) -> None:
    if strays:
        raise ValueError(f"{len(strays)} non-image file(s) in {str(folder)!r}, e.g. {strays[:3]}; "
                         f"remove them (accepted extensions: {sorted(IMAGE_EXTENSIONS)}).")


def list_unlabelled(folder: Path) -> list[Path]:
    """The images of a folder to label (no class subfolders needed); another file is an error."""
    images, strays = images_under(folder)
    refuse_strays(strays, folder)
    if not images:
        raise ValueError(f"no images under {str(folder)!r} (predict_dir): expected image files "
                         f"({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return images


def list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """All (file, class index) pairs; any other file, or an empty class folder, is an error, not silently
    skipped."""
    items, strays = [], []
    for label, name in enumerate(classes):
        found = len(items)
        if (split_dir / name).is_dir():
            images, others = images_under(split_dir / name)
            items += [(f, label) for f in images]
            strays += others
        if (split_dir / name).is_dir() and len(items) == found:
            raise ValueError(f"the class folder {str(split_dir / name)!r} holds no image: add its images or "
                             f"remove the folder (an empty class is never predicted right).")
    refuse_strays(strays, split_dir)
    if not items:
        raise ValueError(f"no images under {str(split_dir)!r}: expected {split_dir}/<class>/<image>.")
    return items


# Bump when the decoder's output changes (resampling filter, colour conversion): old caches are then ignored.
DECODE_VERSION = "bilinear-16bit-channels-3"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lightning_kd`` (``~/.cache/lightning_kd``): the dataset folder is never written."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_kd"


def image_format(path: Path) -> tuple[int, int, int]:
    """``(channels, height, width)`` the decoder gives ``path``: 1 channel for greyscale images, else 3."""
    from PIL import Image

    with Image.open(path, formats=PIL_FORMATS) as img:
        grey = img.mode in ("1", "L", "LA", "I", "F") or img.mode.startswith("I;16")
        return (1 if grey else 3, img.height, img.width)


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) indices: ``round(fraction * n_c)`` of each class's ``n_c`` images (at least one), drawn
    with ``seed``; both sorted."""
    generator, held = torch.Generator().manual_seed(seed), []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        take = max(1, round(fraction * len(members)))
        if take >= len(members):
            raise ValueError(f"val_fraction={fraction} would hold out all {len(members)} training image(s) of "
                             f"class {label}: lower val_fraction, add images, or give a val_dir.")
        held.append(members[torch.randperm(len(members), generator=generator)[:take]])
    held = torch.cat(held).sort().values
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held] = False
    return kept.nonzero().flatten(), held


def fingerprint(split_dir: Path, items: list[tuple[Path, int]], classes: list[str], decode: dict) -> str:
    """Hash of what a decoded split depends on: every file's relative path, size, modification and change
    times and label, the class names and the decode settings. Adding, removing, touching or replacing an
    image changes it (a replaced file gets a new change time even when its size and mtime are restored)."""
    digest = hashlib.sha256(json.dumps({"classes": classes, "decode": decode}, sort_keys=True).encode())
    for f, label in items:
        stat = f.stat()
        digest.update(f"{f.relative_to(split_dir).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                      f"{stat.st_ctime_ns}\0{label}\n".encode())
    return digest.hexdigest()


def load_cache(path: Path, key: str, shape: tuple[int, ...]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The cached (images, labels) if ``path`` holds a cache for ``key``; None when there is none or
    it is stale. A file that cannot be read, or whose tensors are not uint8 images of ``shape`` and
    their int64 labels, is reported and ignored."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if entry["fingerprint"] != key:
            return None  # the files or settings changed: decode again and overwrite
        images, labels = entry["images"], entry["labels"]
        if (images.dtype, tuple(images.shape), labels.dtype, tuple(labels.shape)) != \
                (torch.uint8, shape, torch.long, shape[:1]):
            raise ValueError(f"unexpected content: images {images.dtype} {tuple(images.shape)}, labels "
                             f"{labels.dtype} {tuple(labels.shape)}; expected uint8 {shape}, int64 {shape[:1]}")
    except Exception as err:  # noqa: BLE001 -- any unreadable cache is only a lost speed-up
        warnings.warn(f"ignoring unreadable decode cache {str(path)!r} ({type(err).__name__}: {err}); "
                      f"decoding the images again and rewriting it.", stacklevel=2)
        return None
    return images, labels


def save_cache(path: Path, key: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """Write atomically (:func:`~lightning_kd.checkpoints.atomic_save`): under DDP every process may get
    here, all with the same content, so readers never see a partial file. A failed write only warns:
    the run goes on with the decoded images."""
    try:
        atomic_save({"fingerprint": key, "images": images, "labels": labels, "classes": classes}, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        warnings.warn(f"could not write the decode cache {str(path)!r}: {err}; set data.init_args.cache_dir "
                      f"to a writable folder (or cache: false).", stacklevel=2)


class ImageFolderDataModule(InMemoryDataModule):
    """Images in torchvision's ImageFolder layout (``root/<split>/<class>/<image>``), kept as uint8 in memory.

    Defaults are for your own data: validation is a stratified ``val_fraction`` of ``train`` (the
    best checkpoint is never chosen on test images), images keep their own size and channels (a
    greyscale set stays 1 channel), and there is no random augmentation (a flip or a 4-pixel shift
    can change what a small image shows); switch it on with ``pad``/``flip``. The CIFAR-10 JPEG tree
    with the KD papers' convention: ``val_dir: test, pad: 4, flip: true`` (the results command's
    ``--data-root`` keeps a CIFAR config's settings). Class names are the sorted folder names of train.

    Decoding is cached: a decoded split's uint8 images, labels and class names are saved to
    ``<cache_dir>/<split>-<size>px-<hash of the split path>.pt`` and read back while their
    fingerprint matches (every image's relative path, size, modification and change times, the
    class names and the decode settings); otherwise the split is decoded again and the file
    rewritten. Under DDP ``prepare_data`` decodes once per node and every rank reads the cache.

    Args:
        root: dataset folder.
        train_dir, test_dir: split folder names under ``root``.
        val_dir: a folder of validation images; None (default) holds out ``val_fraction`` of train.
        val_fraction: share of each class's training images held out for validation (seeded by
            ``split_seed``) when ``val_dir`` is None.
        image_size: side of the square images after resizing; None keeps the first training image's
            size (square images; others are resized to it).
        channels: 1 (greyscale) or 3 (RGB); None follows the first training image. Greyscale into a
            network that takes only 3 channels (torchvision's) is replicated in front of it.
        decode_threads: threads decoding files.
        cache: keep decoded splits on disk (``False``: decode every run, write nothing).
        cache_dir: where the cache files go; default ``$XDG_CACHE_HOME/lightning_kd`` (``~/.cache/lightning_kd``).
        predict_dir: a folder of images to label (no class subfolders): ``predict`` runs on it instead of
            the test split, decoded as the training images are (size, channels, normalization).
        **kwargs: see :class:`~lightning_kd.datamodules.base.InMemoryDataModule` (here ``pad: 0``,
            ``flip: false`` by default).
    """

    def __init__(self, root: str, train_dir: str = "train", val_dir: Optional[str] = None, test_dir: str = "test",
                 val_fraction: float = 0.1, split_seed: int = 0, image_size: Optional[int] = None,
                 channels: Optional[int] = None, decode_threads: int = 8, cache: bool = True,
                 cache_dir: Optional[str] = None, predict_dir: Optional[str] = None, pad: int = 0,
                 flip: bool = False, **kwargs):
        super().__init__(pad=pad, flip=flip, **kwargs)
        self.root = Path(root)
        self.predict_dir = None if predict_dir is None else Path(predict_dir)
        if self.predict_dir is not None and not self.predict_dir.is_dir():
            raise FileNotFoundError(f"ImageFolderDataModule: predict_dir {str(self.predict_dir)!r} does not exist: "
                                    f"give a folder of the images to label.")
        self.files: dict[Path, list[Path]] = {}  # each decoded folder's image files, in the order of its tensors
        self.split_dirs = {"train": train_dir, "val": val_dir or train_dir, "test": test_dir}
        for split, name in self.split_dirs.items():
            if not (self.root / name).is_dir():
                raise FileNotFoundError(f"ImageFolderDataModule: {split} folder {str(self.root / name)!r} "
                                        f"does not exist; expected {self.root}/<split>/<class>/<image> "
                                        f"(set data.init_args.root / {split}_dir).")
        if val_dir is None and not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}; or give a val_dir.")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or null (follow the images), got {channels}.")
        train = self.root / train_dir
        self.classes = class_folders(train)
        if len(self.classes) < 2:
            raise ValueError(f"ImageFolderDataModule: {str(train)!r} has {len(self.classes)} class "
                             f"folder(s); expected one folder per class (at least 2).")
        for name in dict.fromkeys(self.split_dirs.values()):
            extra = sorted(set(class_folders(self.root / name)) - set(self.classes))
            if extra:
                case = [f"{e!r} differs from train's {c!r} only in case" for e in extra for c in self.classes
                        if c.lower() == e.lower()]
                hint = f" ({'; '.join(case)})"
                raise ValueError(f"ImageFolderDataModule: {str(self.root / name)!r} has class folder(s) {extra} "
                                 f"that the train folder lacks{hint if case else ''}: their "
                                 f"images would be dropped. Rename them to train's class names or add them to train.")
        self.val_dir, self.val_fraction, self.split_seed = val_dir, val_fraction, split_seed
        if image_size is None or channels is None:
            first = list_images(train, self.classes)[0][0]
            found_channels, height, width = image_format(first)
            if image_size is None and height != width:
                raise ValueError(f"ImageFolderDataModule: {str(first)!r} is {width}x{height}, not square: set "
                                 f"data.init_args.image_size (images are resized to squares of that side).")
            image_size = image_size or height
            channels = channels or found_channels
        self.num_classes = len(self.classes)
        self.input_shape = (channels, image_size, image_size)
        self.image_size, self.channels, self.decode_threads = image_size, channels, decode_threads
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    def prepare_data(self) -> None:
        if self.cache:  # once per node, before setup on every rank: the ranks then read the cache
            for name in dict.fromkeys(self.split_dirs.values()):
                self._load_split(self.root / name)

    def _decode(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path, formats=PIL_FORMATS) as img:
                img = to_8bit(img).convert("L" if self.channels == 1 else "RGB")
                if img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ValueError(f"cannot decode image {str(path)!r}: {err}; remove or replace the file.") from None
        return data.view(self.image_size, self.image_size, self.channels).permute(2, 0, 1)

    def load_splits(self):
        decoded = {name: self._load_split(self.root / name) for name in dict.fromkeys(self.split_dirs.values())}
        splits = {split: decoded[name] for split, name in self.split_dirs.items()}
        if self.val_dir is None:
            images, labels = splits["train"]
            kept, held = stratified_holdout(labels, self.val_fraction, self.split_seed)
            splits["train"], splits["val"] = (images[kept], labels[kept]), (images[held], labels[held])
        return splits

    def _cache_file(self, split_dir: Path) -> Path:
        # One file per (split folder, image size): a changed tree overwrites its own file
        # instead of piling up new ones; the fingerprint inside decides whether it is current.
        where = hashlib.sha256(f"{split_dir.resolve()}\0{self.image_size}\0{self.channels}".encode()).hexdigest()[:12]
        return self.cache_dir / f"{split_dir.name}-{self.image_size}px-{where}.pt"

    def _load_split(self, split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        items = list_images(split_dir, self.classes)
        self.files[split_dir] = [f for f, _ in items]
        if self.cache:
            decode = {"image_size": self.image_size, "channels": self.channels, "version": DECODE_VERSION}
            key = fingerprint(split_dir, items, self.classes, decode)
            path = self._cache_file(split_dir)
            cached = load_cache(path, key, (len(items), *self.input_shape))
            if cached is not None:
                return cached
        images, labels = self._decode_all([f for f, _ in items], split_dir), torch.tensor([c for _, c in items])
        if self.cache:
            save_cache(path, key, images, labels, self.classes)
        return images, labels

    def _decode_all(self, files: list[Path], folder: Path) -> torch.Tensor:
        with ThreadPoolExecutor(self.decode_threads) as pool:
            decoding = pool.map(self._decode, files)
            return torch.stack(list(tqdm(decoding, total=len(files), desc=f"decoding {folder}", unit="img",
                                         disable=len(files) < 5000)))

    def predict_dataloader(self):
        if self.predict_dir is None:
            return super().predict_dataloader()
        if "predict" not in self.splits:  # decoded when asked (not cached): a folder to label changes often
            files = list_unlabelled(self.predict_dir)
            self.files[self.predict_dir] = files
            self.splits["predict"] = (self._decode_all(files, self.predict_dir), torch.full((len(files),), -1))
        return self._loader("predict", False)

    def predict_names(self) -> list[str]:
        """The files ``predict`` labels, in its order: those of ``predict_dir``, else of the test split."""
        folder = self.predict_dir if self.predict_dir is not None else self.root / self.split_dirs["test"]
        return [str(f) for f in self.files[folder]]
