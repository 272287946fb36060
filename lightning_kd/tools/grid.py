"""The CIFAR-100 benchmark grid: pair blocks x method blocks, each cell a ``lightning-kd fit`` command line.

    lightning-kd fit $(python -m lightning_kd.tools.grid resnet32x4_resnet8x4 kd) --model.init_args.teacher_ckpt T
    python -m lightning_kd.tools.grid --list          # every pair, its methods and those that do not apply

A cell is ``-c <data> -c configs/_base/methods/<method>.yaml`` plus the pair's settings as overrides:
``configs/_base/pairs/<teacher>_<student>.yaml`` names the two networks, ``every_method`` (``model.init_args``
of every run of the pair, e.g. the 0.01 learning rate of MobileNetV2 and ShuffleNet students),
``methods.<method>`` (that method's ``model.init_args`` for this pair: its layers, DKD's beta) and
``not_applicable`` (a method left out, with why). A new method is a new file in ``configs/_base/methods/``: it
joins the grid (and its test) by itself; a per-pair setting of it is one line in each pair block.
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightning_kd.configs import SHIPPED_CONFIGS

PAIRS = SHIPPED_CONFIGS / "_base" / "pairs"
METHODS = SHIPPED_CONFIGS / "_base" / "methods"
DATA = SHIPPED_CONFIGS / "_base" / "cifar100.yaml"
TEACHER = "teacher"  # the method block of a pair's teacher run (not a row of methods)
NO_TEACHER = ("baseline", TEACHER)  # method blocks that train one network on labels alone
PAIR_KEYS = {"teacher", "student", "every_method", "methods", "not_applicable"}


@dataclass
class Pair:
    """A pair block (see the module's docstring)."""

    name: str
    teacher: str
    student: str
    every_method: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    not_applicable: dict = field(default_factory=dict)


def pair_names() -> list[str]:
    return sorted(p.stem for p in PAIRS.glob("*.yaml"))


def method_names() -> list[str]:
    """The method blocks in ``configs/_base/methods/`` (the teacher's excepted): the grid's rows."""
    return sorted(p.stem for p in METHODS.glob("*.yaml") if p.stem != TEACHER)


def load_pair(name: str) -> Pair:
    path = PAIRS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no pair block {path}: pick one of {pair_names()}.")
    data = yaml.safe_load(path.read_text())
    unknown = set(data) - PAIR_KEYS
    if unknown or not {"teacher", "student"} <= set(data):
        raise ValueError(f"pair block {path} has keys {sorted(data)}: it needs teacher and student, and may have "
                         f"{sorted(PAIR_KEYS - {'teacher', 'student'})} only.")
    extra = set(data.get("methods") or {}) | set(data.get("not_applicable") or {})
    strays = sorted(extra - set(method_names()))
    if strays:
        raise ValueError(f"pair block {path} names methods {strays} that have no block in {METHODS}: add the "
                         f"method block or remove them.")
    return Pair(name, **{k: v if k in ("teacher", "student") else (v or {}) for k, v in data.items()})


def applies(pair: Pair, method: str) -> bool:
    return method not in pair.not_applicable


def cell_args(pair: Pair, method: str, data: Path = DATA) -> list[str]:
    """The ``lightning-kd fit`` arguments of one cell (``method`` may be ``teacher``: the pair's teacher run).
    The teacher's checkpoint is not among them (``--model.init_args.teacher_ckpt``)."""
    if not (METHODS / f"{method}.yaml").is_file():
        raise ValueError(f"no method block {METHODS / method}.yaml: pick one of {method_names()}.")
    if not applies(pair, method):
        raise ValueError(f"{method} does not apply to {pair.name}: {pair.not_applicable[method]}")
    if method == TEACHER:
        settings = {"student": pair.teacher}
    elif method in NO_TEACHER:
        settings = {"student": pair.student, **pair.every_method}
    else:
        settings = {"student": pair.student, "teacher": pair.teacher, **pair.every_method,
                    **(pair.methods.get(method) or {})}
    args = ["-c", shown(data), "-c", shown(METHODS / f"{method}.yaml")]
    return args + [f"--model.init_args.{key}={value if isinstance(value, str) else json.dumps(value)}"
                   for key, value in settings.items()]


def shown(path: Path) -> str:
    """A shipped config as ``configs/...`` (``lightning-kd`` finds it from any working directory), else as given."""
    path = Path(path)
    try:
        return str(Path("configs") / path.resolve().relative_to(SHIPPED_CONFIGS))
    except ValueError:
        return str(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pair", nargs="?", help="a pair block's name, e.g. resnet32x4_resnet8x4")
    parser.add_argument("method", nargs="?", help="a method block's name (or teacher), e.g. kd")
    parser.add_argument("--data", type=Path, default=DATA, help="the data and trainer block")
    parser.add_argument("--list", action="store_true", help="list the pairs and the methods that apply to each")
    args = parser.parse_args(argv)
    if args.list:
        for name in pair_names():
            pair = load_pair(name)
            left_out = [m for m in method_names() if not applies(pair, m)]
            print(f"{name}: {' '.join(m for m in method_names() if applies(pair, m))}"
                  + (f" (not: {', '.join(left_out)})" if left_out else ""))
        return
    if not (args.pair and args.method):
        parser.error(f"name a pair and a method, e.g. resnet32x4_resnet8x4 kd (or --list); pairs: {pair_names()}")
    try:
        print(shlex.join(cell_args(load_pair(args.pair), args.method, args.data)))
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
