"""``python -m lightning_kd.tools.shards ROOT OUT``: convert an ImageFolder tree into litdata shards once.

Every split ``ROOT/<split>/<class>/<image>`` named by ``--splits`` becomes ``OUT/<split>/`` shards holding
the files' encoded bytes; ``OUT/shards.json`` records the classes and what was converted. Run it again
after an interruption: finished splits are skipped, an interrupted one goes on after its last finished
shard (with the first run's number of workers). Then train with ``--data StreamingImageDataModule
--data.root OUT`` (``configs/imagenet/``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Sequence

from lightning_kd.datamodules.image_folder import class_folders, list_images
from lightning_kd.datamodules.streaming import META_FILE, SHARD_FORMAT, litdata
from lightning_kd.processes import ending_its_processes


def tree_fingerprint(split_dir: Path, items: list[tuple[Path, int]], classes: list[str]) -> str:
    """Hash of the class names and every file's relative path, size and label: what the shards hold."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for f, label in items:
        digest.update(f"{f.relative_to(split_dir).as_posix()}\0{f.stat().st_size}\0{label}\n".encode())
    return digest.hexdigest()


def read_sample(item: list) -> dict:
    """One shard record of ``[path, label, index]``: the file's encoded bytes (never re-encoded), its label and
    its index in the split."""
    path, label, index = item
    return {"index": index, "label": label, "image": Path(path).read_bytes()}


def convert_tree(root: str, out: str, splits: Sequence[str] = ("train", "val"), num_workers: int = 4,
                 chunk_bytes: str = "64MB", overwrite: bool = False) -> dict:
    """Write ``root/<split>/<class>/<image>`` of each split into litdata shards under ``out/<split>``.

    Resumable: a split already converted from the same files is skipped, and a split whose conversion
    was interrupted continues from litdata's checkpoint of the shards it had finished (``use_checkpoint``),
    when its files are unchanged (else it starts over). Shards of another tree or format in ``out`` are an
    error unless ``overwrite``. Returns the metadata written to ``out/shards.json``."""
    root_dir, out_dir = Path(root), Path(out)
    missing = [s for s in splits if not (root_dir / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"no split folder {[str(root_dir / s) for s in missing]}: expected "
                                f"{root_dir}/<split>/<class>/<image> (choose the splits with --splits).")
    classes = class_folders(root_dir / splits[0])
    if len(classes) < 2:
        raise ValueError(f"{str(root_dir / splits[0])!r} has {len(classes)} class folder(s); expected one "
                         f"folder per class (at least 2).")
    meta_path = out_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and (meta.get("format") != SHARD_FORMAT or meta.get("classes") != classes) and not overwrite:
        raise ValueError(f"{str(out_dir)!r} holds shards of another tree or format (format "
                         f"{meta.get('format')}, {len(meta.get('classes', []))} classes): give another output "
                         f"folder or --overwrite.")
    if meta is None or meta.get("format") != SHARD_FORMAT or meta.get("classes") != classes:
        meta = {"format": SHARD_FORMAT, "classes": classes, "splits": {}}
    pending = meta.setdefault("pending", {})  # split -> {fingerprint, workers} of a conversion not finished yet
    for split in splits:
        split_dir = root_dir / split
        extra = sorted(set(class_folders(split_dir)) - set(classes))
        if extra:
            raise ValueError(f"{str(split_dir)!r} has class folder(s) {extra} that {splits[0]!r} lacks: rename "
                             f"them or add them to {splits[0]!r}.")
        items = list_images(split_dir, classes)
        key = tree_fingerprint(split_dir, items, classes)
        done = meta["splits"].get(split)
        if done is not None and done["fingerprint"] == key and (out_dir / split / "index.json").is_file():
            print(f"{split}: {done['count']} images already converted, skipped")
            continue
        if done is not None and not overwrite:
            raise ValueError(f"{str(out_dir / split)!r} holds shards of other files than {str(split_dir)!r}: "
                             f"give another output folder or --overwrite.")
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
