"""``python -m lightning_kd.tools.shards ROOT OUT``: convert an ImageFolder tree into litdata shards once.

Every split ``ROOT/<split>/<class>/<image>`` named by ``--splits`` becomes ``OUT/<split>/`` shards holding
the files' encoded bytes; ``OUT/shards.json`` records the classes and what was converted. Run it again
after an interruption: finished splits are skipped, an interrupted one goes on after its last finished
shard (with the first run's number of workers). Then train with ``--data StreamingImageDataModule
--data.root OUT`` (``configs/imagenet/``).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from lightning_kd.datamodules.image_folder import PIL_FORMATS, class_folders, fingerprint, list_images, to_8bit
from lightning_kd.datamodules.streaming import META_FILE, SHARD_FORMAT, litdata
from lightning_kd.processes import ending_its_processes

# What a conversion writes in a split folder (litdata's index, chunks and resume checkpoints).
OWN_FILE = re.compile(r"(\d+-)?index\.json|chunk-[\d-]+\.bin|\.checkpoints/[^/]+\.json")


def read_sample(item: list) -> dict:
    """One shard record of ``[path, label, index]``: the file's encoded bytes (never re-encoded), its label and
    its index in the split."""
    path, label, index = item
    return {"index": index, "label": label, "image": Path(path).read_bytes()}


def decode_error(path: Path) -> Optional[str]:
    """Why the training decode would fail on ``path`` (decoded whole, as the loaders will), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            to_8bit(img).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return f"{str(path)!r}: {err}"
    return None


def check_images(paths: list[Path], workers: int) -> None:
    """Decode every image before a shard is written; refuse naming the files that do not decode."""
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            errors = list(pool.map(decode_error, paths, chunksize=64))
    else:
        errors = [decode_error(p) for p in paths]
    bad = [e for e in errors if e is not None]
    if bad:
        raise ValueError(f"{len(bad)} image(s) do not decode ({'; '.join(bad[:3])}): remove or replace them, then "
                         f"convert again; nothing was written.")


def check_folders(root_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder inside the input tree, or the input inside the output folder."""
    root, out = root_dir.resolve(), out_dir.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise ValueError(f"the output folder {str(out_dir)!r} and the image tree {str(root_dir)!r} overlap (one is "
                         f"inside the other): give an output folder outside the tree.")


def foreign_files(folder: Path) -> list[str]:
    """Files under ``folder`` that a conversion does not write (litdata's ``index.json``, ``chunk-*.bin`` and
    its ``.checkpoints/``): a folder holding any is not the converter's to delete."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not p.is_dir() and not OWN_FILE.fullmatch(p.relative_to(folder).as_posix()))


def check_owned(out_dir: Path, meta: Optional[dict], splits: Sequence[str]) -> None:
    """Refuse an output folder the converter did not write: a folder that is not empty needs its
    ``shards.json``, and a split folder about to be replaced must hold only what a conversion writes."""
    if meta is None and out_dir.is_dir() and any(out_dir.iterdir()):
        found = sorted(p.name for p in out_dir.iterdir())
        raise ValueError(f"the output folder {str(out_dir)!r} holds {found[:5]} but no {META_FILE}: it is not a "
                         f"folder this converter wrote and nothing in it was touched; give a new or empty folder.")
    for split in splits:
        foreign = foreign_files(out_dir / split) if (out_dir / split).is_dir() else []
        if foreign:
            raise ValueError(f"{str(out_dir / split)!r} holds files a conversion does not write ({foreign[:5]}); "
                             f"nothing was touched: move them out, or give another output folder.")


def read_meta(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is not the converter's JSON ({err}): give another output folder.") from None


def convert_tree(root: str, out: str, splits: Sequence[str] = ("train", "val"), num_workers: int = 4,
                 chunk_bytes: str = "64MB", overwrite: bool = False) -> dict:
    """Write ``root/<split>/<class>/<image>`` of each split into litdata shards under ``out/<split>``.

    Resumable: a split already converted from the same files is skipped, and a split whose conversion
    was interrupted continues from litdata's checkpoint of the shards it had finished (``use_checkpoint``),
    when its files are unchanged (else it starts over). Shards of another tree or format in ``out`` are an
    error unless ``overwrite``. Everything is checked before anything is written or deleted: the folders do not
    overlap, ``out`` is empty or the converter's own (``shards.json``; a split folder holding other files is
    refused, never deleted), every image to convert decodes. Returns the metadata written to ``out/shards.json``."""
    root_dir, out_dir = Path(root), Path(out)
    check_folders(root_dir, out_dir)
    missing = [s for s in splits if not (root_dir / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"no split folder {[str(root_dir / s) for s in missing]}: expected "
                                f"{root_dir}/<split>/<class>/<image> (choose the splits with --splits).")
    classes = class_folders(root_dir / splits[0])
    if len(classes) < 2:
        raise ValueError(f"{str(root_dir / splits[0])!r} has {len(classes)} class folder(s); expected one "
                         f"folder per class (at least 2).")
    meta_path = out_dir / META_FILE
    meta = read_meta(meta_path)
    check_owned(out_dir, meta, splits)
    if meta is not None and (meta.get("format") != SHARD_FORMAT or meta.get("classes") != classes) and not overwrite:
        raise ValueError(f"{str(out_dir)!r} holds shards of another tree or format (format "
                         f"{meta.get('format')}, {len(meta.get('classes', []))} classes): give another output "
                         f"folder or --overwrite.")
    if meta is None or meta.get("format") != SHARD_FORMAT or meta.get("classes") != classes:
        meta = {"format": SHARD_FORMAT, "classes": classes, "splits": {}}
    pending = meta.setdefault("pending", {})  # split -> {fingerprint, workers} of a conversion not finished yet
    todo = []
    for split in splits:
        split_dir = root_dir / split
        extra = sorted(set(class_folders(split_dir)) - set(classes))
        if extra:
            raise ValueError(f"{str(split_dir)!r} has class folder(s) {extra} that {splits[0]!r} lacks: rename "
                             f"them or add them to {splits[0]!r}.")
        items = list_images(split_dir, classes)
        key = fingerprint(split_dir, items, classes, {"shard_format": SHARD_FORMAT})  # a same-size replaced file too
        done = meta["splits"].get(split)
        if done is not None and done["fingerprint"] == key and (out_dir / split / "index.json").is_file():
            print(f"{split}: {done['count']} images already converted, skipped")
            continue
        if done is not None and not overwrite:
            raise ValueError(f"{str(out_dir / split)!r} holds shards of other files than {str(split_dir)!r}: "
                             f"give another output folder or --overwrite.")
        todo.append((split, items, key))
    check_images([f for _, items, _ in todo for f, _ in items], num_workers)
    for split, items, key in todo:
        unfinished = pending.get(split, {})
        resume = unfinished.get("fingerprint") == key and (out_dir / split / ".checkpoints").is_dir()
        if (out_dir / split).is_dir() and not resume:  # replaced, or unfinished from other files
            shutil.rmtree(out_dir / split)
        workers = unfinished["workers"] if resume else num_workers  # litdata resumes with the same count only
        pending[split] = {"fingerprint": key, "workers": workers}
        meta["splits"].pop(split, None)
        write_meta(meta_path, meta)
        # lists, not tuples: litdata compares them with its checkpoint's JSON copy to resume
        inputs = [[str(f), label, i] for i, (f, label) in enumerate(items)]
        print(f"{split}: {'resuming' if resume else 'converting'} {len(inputs)} images of {len(classes)} classes "
              f"into {out_dir / split} ({workers} workers)")
        with ending_its_processes():  # a failed conversion leaves litdata's workers' helpers running
            litdata().optimize(fn=read_sample, inputs=inputs, output_dir=str(out_dir / split),
                               chunk_bytes=chunk_bytes, num_workers=workers, use_checkpoint=True, reorder_files=False,
                               verbose=True)
        meta["splits"][split] = {"count": len(inputs), "fingerprint": key}
        del pending[split]
        write_meta(meta_path, meta)
    return meta


def write_meta(path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("root", help="the ImageFolder tree (ROOT/<split>/<class>/<image>)")
    parser.add_argument("out", help="the shard folder to write")
    parser.add_argument("--splits", nargs="+", default=["train", "val"],
                        help="split folders to convert; the first one's folders are the classes")
    parser.add_argument("--workers", type=int, default=4, help="conversion processes")
    parser.add_argument("--chunk-bytes", default="64MB", help="shard size")
    parser.add_argument("--overwrite", action="store_true", help="replace shards of another tree in OUT")
    args = parser.parse_args(argv)
    meta = convert_tree(args.root, args.out, args.splits, args.workers, args.chunk_bytes, args.overwrite)
    counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
    print(f"{args.out}: {len(meta['classes'])} classes; {counts} images")


if __name__ == "__main__":
    main()
