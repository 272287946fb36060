"""``python -m lightning_kd.tools.shards ROOT OUT``: convert an ImageFolder tree into litdata shards once.

Every split ``ROOT/<split>/<class>/<image>`` named by ``--splits`` becomes ``OUT/<split>/`` shards holding
the files' encoded bytes; ``OUT/shards.json`` records the classes and what was converted. Run it again
after an interruption: finished splits are skipped, an interrupted one goes on after its last finished
shard (with the first run's number of workers). Then train with ``--data StreamingImageDataModule
--data.root OUT`` (``configs/imagenet/``).
"""
from __future__ import annotations

import argparse

from lightning_kd.datamodules.streaming import convert_tree


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
