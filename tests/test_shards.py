"""The shard converter deletes only what it wrote, checks everything before it writes, and decodes every image.

Each test builds a tiny tree of 8x8 BMPs (a BMP's size depends only on its dimensions, so a replaced image can
keep the size of the old one) and compares the folders byte for byte before and after a refused conversion.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_kd.datamodules.streaming import litdata
from lightning_kd.tools.shards import convert_tree

litdata()  # fails here, naming the install, where litdata is missing


def make_tree(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.bmp")
    return root


def contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stored_images(out: Path) -> dict:
    """index -> the encoded bytes stored in the train shards."""
    return {r["index"]: r["image"] for r in litdata().StreamingDataset(str(out / "train"))}


def convert(root: Path, out: Path, **options) -> dict:
    return convert_tree(str(root), str(out), splits=["train"], num_workers=1, **options)


@pytest.mark.parametrize("where", ["output inside the tree", "tree inside the output", "the same folder"])
def test_overlapping_folders_are_refused_and_the_tree_is_untouched(tmp_path, where):
    tree = make_tree(tmp_path / "data" / "tree")
    out = {"output inside the tree": tree / "train", "tree inside the output": tmp_path / "data",
           "the same folder": tree}[where]
    before = contents(tmp_path)
    with pytest.raises(ValueError, match="overlap.*give an output folder outside the tree"):
        convert(tree, out)
    assert contents(tmp_path) == before


def test_a_folder_the_converter_did_not_write_is_refused_and_kept(tmp_path):
    tree = make_tree(tmp_path / "tree")
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds \['train'\] but no shards.json.*nothing in it was touched"):
        convert(tree, out)
    with pytest.raises(ValueError, match=r"holds \['train'\] but no shards.json"):
        convert(tree, out, overwrite=True)
    assert contents(out) == {"train/notes.txt": b"mine"}


def test_a_truncated_image_is_refused_at_conversion_naming_it(tmp_path):
    tree = make_tree(tmp_path / "tree")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tree / "train" / "b" / "2.jpg", quality=90)
    truncated = tree / "train" / "b" / "2.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"1 image\(s\) do not decode \('.*train/b/2.jpg': [Tt]runcated.*"
                                         r"nothing was written"):
        convert(tree, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # litdata's conversion spawns processes
def test_a_converted_split_is_replaced_when_a_file_changes_and_never_deleted_with_other_files(tmp_path, capsys):
    tree, out = make_tree(tmp_path / "tree"), tmp_path / "out"
    convert(tree, out)
    (out / "train" / "notes.txt").write_text("mine")
    before = contents(out)
    with pytest.raises(ValueError, match=r"'.*out/train' holds files a conversion does not write \(\['notes.txt'\]\)"):
        convert(make_tree(tmp_path / "other", seed=1), out, overwrite=True)
    assert contents(out) == before
    (out / "train" / "notes.txt").unlink()
    first = tree / "train" / "a" / "0.bmp"  # replaced by another image of the same size and mtime
    stat = first.stat()
    replacement = (tree / "train" / "b" / "1.bmp").read_bytes()
    assert len(replacement) == stat.st_size and replacement != first.read_bytes()
    first.write_bytes(replacement)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    convert(tree, out, overwrite=True)
    assert "train: converting 4 images" in capsys.readouterr().out
    assert stored_images(out)[0] == replacement
