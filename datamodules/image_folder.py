"""A generic ImageFolder datamodule (``root/<split>/<class>/<image>``), decoded once into memory."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from datamodules.base import InMemoryDataModule

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """All (file, class index) pairs; any other file is an error, not silently skipped."""
    items, strays = [], []
    for label, name in enumerate(classes):
        for f in sorted((split_dir / name).rglob("*")):
            if f.is_dir() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((f, label))
            else:
                strays.append(str(f))
    if strays:
        raise ValueError(f"{len(strays)} non-image file(s) in {str(split_dir)!r}, e.g. {strays[:3]}; "
                         f"remove them (accepted extensions: {sorted(IMAGE_EXTENSIONS)}).")
    if not items:
        raise ValueError(f"no images under {str(split_dir)!r}: expected {split_dir}/<class>/<image>.")
    return items


class ImageFolderDataModule(InMemoryDataModule):
    """Images in torchvision's ImageFolder layout, resized to ``image_size`` and kept as uint8.

    Meant for datasets that fit in memory (for example the CIFAR-10 JPEG tree:
    ``root=cifar10``, splits ``train`` and ``test``). Class names are the sorted folder names of
    the train split.

    Args:
        root: dataset folder.
        train_dir, val_dir, test_dir: split folder names under ``root``.
        image_size: side of the square images after resizing.
        decode_threads: threads decoding files.
        **kwargs: see :class:`~datamodules.base.InMemoryDataModule`.
    """

    def __init__(self, root: str, train_dir: str = "train", val_dir: str = "test", test_dir: str = "test",
                 image_size: int = 32, decode_threads: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.split_dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        for split, name in self.split_dirs.items():
            if not (self.root / name).is_dir():
                raise FileNotFoundError(f"ImageFolderDataModule: {split} folder {str(self.root / name)!r} "
                                        f"does not exist; expected {self.root}/<split>/<class>/<image> "
                                        f"(set data.init_args.root / {split}_dir).")
        train = self.root / train_dir
        self.classes = sorted(d.name for d in train.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(self.classes) < 2:
            raise ValueError(f"ImageFolderDataModule: {str(train)!r} has {len(self.classes)} class "
                             f"folder(s); expected one folder per class (at least 2).")
        self.num_classes = len(self.classes)
        self.input_shape = (3, image_size, image_size)
        self.image_size, self.decode_threads = image_size, decode_threads

    def _decode(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (self.image_size, self.image_size):
                    img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode image {str(path)!r}: {err}; remove or replace the file.") from None
        return data.view(self.image_size, self.image_size, 3).permute(2, 0, 1)

    def load_splits(self):
        decoded = {}
        for split, name in self.split_dirs.items():
            if name in decoded:
                continue
            items = list_images(self.root / name, self.classes)
            with ThreadPoolExecutor(self.decode_threads) as pool:
                decoding = pool.map(self._decode, (f for f, _ in items))
                images = list(tqdm(decoding, total=len(items), desc=f"decoding {self.root / name}",
                                   unit="img", disable=len(items) < 5000))
            decoded[name] = (torch.stack(images), torch.tensor([c for _, c in items], dtype=torch.long))
        return {split: decoded[name] for split, name in self.split_dirs.items()}
