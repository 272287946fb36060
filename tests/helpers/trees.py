"""Small image trees (``root/<split>/<class>/<i>.png``) for the own-data tests: one grey level per class plus
noise, so a network can learn them in a few steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LEVELS = {"cats": 60, "dogs": 190}


def image_tree(root: Path, mode: str = "RGB", sizes=(("train", 10), ("test", 4)), side: int = 24) -> None:
    """Write a tree of ``mode`` ("RGB" or "L", greyscale) PNGs of ``side`` pixels, classes ``LEVELS``."""
    rng = np.random.default_rng(0)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    for split, n in sizes:
        for name, level in LEVELS.items():
            folder = Path(root) / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 40, shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode=mode).save(folder / f"{i}.png")
