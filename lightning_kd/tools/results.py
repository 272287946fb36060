"""The results table: teacher, student baseline and every method of a config folder, over seeds.

    python -m lightning_kd.tools.results --configs configs/cifar10 \\
        --data-root ../shared/data/cifar10-jpeg.tar.gz --epochs 30 --seeds 0 1 --out docs/RESULTS.md
    python -m lightning_kd.tools.results --configs configs/quickstart --epochs 10 --out docs/RESULTS_quickstart.md

In order: the teacher config (``teacher*.yaml``), the student baseline (``baseline*.yaml``), then
every other YAML of the folder (the methods), each an ordinary fit + test of its config through
:func:`lightning_kd.tools.runner.fit_and_test`. The teacher is trained once (first seed); every
other config runs once per seed and distills from that teacher (``teacher_ckpt`` is overridden;
RCO reads the route the teacher recorded next to its checkpoints). ``--epochs N`` sets every
run's student epochs (``trainer.max_epochs``): the configs' schedules are fractions of the run (LR
milestones, route anchors), so the short table keeps the papers' recipes in shape; a stage that does not
train the whole student (FSP, IE-KD, FitNet ``hints_first``) comes on top, as in the configs, so every row's
student trains as long as the baseline. Writes a markdown report (mean +- std top-1 over seeds, delta vs the baseline, wall time
per run, the exact command line of every run) and a PNG of the validation accuracy per epoch.

Built from :mod:`~lightning_kd.tools.records` (one run and its record), :mod:`~lightning_kd.tools.scheduling`
(runs in processes), :mod:`~lightning_kd.tools.report` and :mod:`~lightning_kd.tools.options`, which
born_again shares; this module only finds the configs and plans the runs.

Resumable: each finished run leaves its record (``run.json``) beside its checkpoints in
``--run-dir``; the same command run again reuses every run whose resolved config (includes
expanded) and overrides are unchanged (and whose teacher is the same run), so an interrupted table is finished
by re-running the command. ``--rerun`` trains everything again.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import functools
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from lightning_kd.tools.options import (add_run_arguments, check_run_arguments, prepare_data_root,
                                        run_overrides, student_epochs_overrides)
from lightning_kd.cli import config_path
from lightning_kd.tools import grid
from lightning_kd.tools.dashboards import log_table, wandb_group
from lightning_kd.tools.launch import add_launch_arguments, check_launch_arguments, pool
from lightning_kd.tools.records import Run, checkpoint_dir, label, network_name, run_one, student_spec
from lightning_kd.tools.report import plot_histories, summarize, write_grid_report, write_report
from lightning_kd.tools.runner import data_overrides, resolve
from lightning_kd.tools.scheduling import in_order, run_all

# Row order of the table; configs are discovered from the folder, their file name's first word is the key.
METHOD_ORDER = ["teacher", "baseline", "kd", "fitnet", "at", "fsp", "rkd", "rco", "dml", "iekd", "iedml"]


def method_key(config: Path) -> str:
    """``kd_resnet32x4_resnet8x4.yaml`` -> ``kd``."""
    return config.stem.split("_")[0].lower()


def discover_configs(folder: Path, skip: Sequence[str] = ()) -> tuple[Path, Path, list[Path]]:
    """(teacher config, baseline config, method configs in table order) of a config folder.

    Args:
        folder: a folder like ``configs/cifar10``.
        skip: file-name glob patterns left out (e.g. ``*_tv_*`` for a different student).
    """
    configs = [c for c in sorted(Path(folder).glob("*.yaml")) if not any(fnmatch.fnmatch(c.name, p) for p in skip)]
    found = {k: [c for c in configs if method_key(c) == k] for k in ("teacher", "baseline")}
    for key, matches in found.items():
        if len(matches) != 1:
            raise ValueError(f"{folder} needs exactly one {key}*.yaml, found {[m.name for m in matches]}; "
                             f"remove the extra ones or leave them out with --skip.")
    rank = {k: i for i, k in enumerate(METHOD_ORDER)}
    methods = [c for c in configs if method_key(c) not in ("teacher", "baseline")]
    methods.sort(key=lambda c: (rank.get(method_key(c), len(rank)), c.name))
    return found["teacher"][0], found["baseline"][0], methods


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, default=None,
                        help="config folder: teacher*.yaml, baseline*.yaml and the method configs (default "
                             "configs/quickstart)")
    parser.add_argument("--pairs", nargs="+", default=None, metavar="PAIR",
                        help="the benchmark grid instead of a folder: pair blocks of configs/_base/pairs (or all), "
                             "each trained with --methods; the table has methods as rows and pairs as columns")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="with --pairs: method blocks of configs/_base/methods (default: all; a method that "
                             "does not apply to a pair is n/a there)")
    parser.add_argument("--teachers", type=Path, default=None, metavar="DIR",
                        help="with --pairs: the published teachers in RepDistiller's layout "
                             "(DIR/<teacher>_vanilla/ckpt_epoch_240.pth) instead of training them")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every student config")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"), help="markdown report (PNG beside it)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/results"), help="checkpoints and resolved configs")
    parser.add_argument("--only", nargs="+", default=None, metavar="KEY",
                        help="method keys to run besides teacher and baseline (e.g. kd fitnet)")
    parser.add_argument("--skip", nargs="*", default=["*_tv_*", "*_peer_parallel.yaml"],
                        help="config file-name patterns to leave out (by default the torchvision student and the "
                             "peer-parallel twins of DML/IE-DML, which need 2+ GPUs)")
    add_run_arguments(parser)
    add_launch_arguments(parser)  # --jobs, --launcher: the teacher beside the configs that need none, then the others
    args = parser.parse_args(argv)
    if args.pairs is None:
        if args.methods is not None or args.teachers is not None:
            parser.error("--methods and --teachers belong to the benchmark grid: add --pairs (e.g. --pairs all).")
        args.configs = args.configs or Path("configs/quickstart")
    else:
        if args.configs is not None:
            parser.error("--pairs runs the benchmark grid, --configs a config folder: pick one.")
        args.configs = grid.METHODS  # the grid's blocks (checked as a folder like --configs)
        check_grid_arguments(parser, args)
    check_run_arguments(parser, args)
    check_launch_arguments(parser, args)
    return args


def check_grid_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Names of pairs and methods, the published teachers' files and RCO's route, before any training."""
    pairs, methods = grid.pair_names(), grid.method_names()
    args.pairs = pairs if args.pairs == ["all"] else args.pairs
    args.methods = methods if args.methods in (None, ["all"]) else args.methods
    for what, names, known in (("pair", args.pairs, pairs), ("method", args.methods, methods)):
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown}: pick from {known} (or all).")
    if "baseline" not in args.methods:
        args.methods = ["baseline", *args.methods]  # every row is compared with it
    if args.teachers is None:
        return
    if "rco" in args.methods:
        parser.error("RCO walks the route its teacher recorded while training; the published teachers have none: "
                     "leave rco out (--methods ...) or train the teachers (no --teachers).")
    for name in args.pairs:
        path = published_teacher(args.teachers, grid.load_pair(name).teacher)
        if not path.is_file():
            parser.error(f"--teachers: no {path} for {name}; RepDistiller's scripts/fetch_pretrained_teachers.sh "
                         f"saves DIR/<teacher>_vanilla/ckpt_epoch_240.pth.")


def published_teacher(folder: Path, network: str) -> Path:
    """RepDistiller's file of a published teacher (its scripts/fetch_pretrained_teachers.sh layout)."""
    return folder / f"{network}_vanilla" / "ckpt_epoch_240.pth"


def grid_main(args: argparse.Namespace, command: str) -> list[Run]:
    """The benchmark grid: per pair its teacher (trained once per network, first seed, or the published one),
    the student's baseline (once per student network) and every method that applies, over the seeds."""
    common = run_overrides(args)
    first = grid.cell_args(grid.load_pair(args.pairs[0]), "baseline")
    data_root = None if args.data_root is None else prepare_data_root(args.data_root, args.run_dir)
    data = data_overrides(data_root, args.cifar_root, args.download,
                          resolve(first[1], *first[2:])["data"] if data_root else None)
    cells, runs, done = {}, [], {}
    executor = pool(args, args.run_dir)
    for name in args.pairs:
        pair = grid.load_pair(name)
        if args.teachers is None:
            job = (f"teacher {pair.teacher}", *cell_job(pair, "teacher", args.seeds[0], data + common,
                                                         args.run_dir / f"teacher_{pair.teacher}" / f"seed{args.seeds[0]}",
                                                         args.epochs))
            teacher = done.get(job[-1]) or run_one(*job, rerun=args.rerun)
            done[job[-1]], teacher_ckpt, teacher_id = teacher, teacher.best_ckpt, teacher.finished
            cells[(name, "teacher")] = [teacher]
        else:
            teacher_ckpt = str(published_teacher(args.teachers, pair.teacher))
            teacher_id = f"published {teacher_ckpt}"
        calls = []
        for method in args.methods:
            if not grid.applies(pair, method):
                continue
            uses_teacher = method not in grid.NO_TEACHER
            extra = [f"--model.init_args.teacher_ckpt={teacher_ckpt}"] if uses_teacher else []
            folder = (args.run_dir / f"baseline_{pair.student}" if method == "baseline"
                      else args.run_dir / name / method)
            key = f"baseline {pair.student}" if method == "baseline" else f"{name} {method}"
            calls += [((key, *cell_job(pair, method, seed, data + extra + common, folder / f"seed{seed}", args.epochs)),
                       teacher_id if uses_teacher else "", method) for seed in args.seeds]
        todo = [(job, teacher_id) for job, teacher_id, _ in calls if job[-1] not in done]
        for (job, _), run in zip(todo, in_order(run_one, [(*job, t, args.rerun) for job, t in todo], executor)):
            done[job[-1]] = run
        for job, _, method in calls:
            cells.setdefault((name, method), []).append(done[job[-1]])
    runs = list({id(r): r for rs in cells.values() for r in rs}.values())  # a shared run once
    keys = [k for k in ["teacher", *args.methods] if any(m == k for _, m in cells)]
    headings = {n: f"{grid.load_pair(n).teacher} → {grid.load_pair(n).student}" for n in args.pairs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(write_grid_report(cells, headings, keys, runs, args.out, command, args.note))
    return runs


def cell_job(pair: grid.Pair, method: str, seed: int, overrides: list[str], folder: Path,
             epochs) -> tuple[Path, int, list[str], Path]:
    """``(config, seed, overrides, run folder)`` of a grid cell for :func:`run_one`: the data block is the
    config, the method block and the pair's settings its first overrides, ``--epochs`` the student's epochs."""
    _, data, *cell = grid.cell_args(pair, method)
    stage = student_epochs_overrides(method_config(method), epochs) if epochs else []
    return config_path(data), seed, [*cell, *overrides, *stage], folder


@functools.lru_cache(maxsize=None)
def method_config(method: str) -> dict:
    """A method block's resolved config (on the first pair it applies to; its stages do not depend on the pair)."""
    pair = next(p for p in map(grid.load_pair, grid.pair_names()) if grid.applies(p, method))
    _, data, *cell = grid.cell_args(pair, method)
    return resolve(data, *cell)


def same_training(teacher: dict, baseline: dict) -> bool:
    """Whether two resolved configs train the same: equal but for the checkpoint folders and RouteRecorder,
    which only saves weights."""
    def trained(cfg: dict) -> dict:
        cfg = copy.deepcopy(cfg)
        for key in ("checkpoint", "last_checkpoint"):
            (cfg.get(key) or {}).pop("dirpath", None)
        callbacks = cfg["trainer"].get("callbacks") or []
        cfg["trainer"]["callbacks"] = [c for c in callbacks if not str(c.get("class_path")).endswith("RouteRecorder")]
        return cfg

    return trained(teacher) == trained(baseline)


def main(argv=None) -> list[Run]:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python -m lightning_kd.tools.results " + shlex.join(argv)
    if args.pairs is not None:
        return grid_main(args, command)
    teacher_cfg, baseline_cfg, method_cfgs = discover_configs(args.configs, args.skip)
    if args.only is not None:
        method_cfgs = [c for c in method_cfgs if method_key(c) in args.only]
    data_root = None if args.data_root is None else prepare_data_root(args.data_root, args.run_dir)
    common = run_overrides(args)

    # The teacher's run folder is known up front: its checkpoints (and the route RouteRecorder writes
    # next to them, where RouteConstrainedTeacher looks) feed the students.
    teacher_dir = args.run_dir / teacher_cfg.stem / f"seed{args.seeds[0]}"

    resolved = {config: resolve(config) for config in [teacher_cfg, baseline_cfg, *method_cfgs]}  # parsed once

    def overrides_for(config: Path) -> list[str]:
        extra = data_overrides(data_root, args.cifar_root, args.download, resolved[config]["data"])
        configured = resolved[config]["model"]["init_args"].get("teacher_ckpt")
        if configured:  # the file the config names (best.ckpt or last.ckpt) of this run's teacher
            name = Path(configured).name if Path(configured).name in ("best.ckpt", "last.ckpt") else "best.ckpt"
            extra.append(f"--model.init_args.teacher_ckpt={checkpoint_dir(teacher_dir) / name}")
        return extra + common + student_epochs_overrides(resolved[config], args.epochs)

    wider = []  # baselines of the other student networks the methods train
    baseline_student = student_spec(resolved[baseline_cfg])
    for spec in dict.fromkeys(json.dumps(student_spec(resolved[c]), sort_keys=True) for c in method_cfgs):
        if json.loads(spec) != baseline_student:  # e.g. FSP's student, as wide as its teacher
            overrides = [*overrides_for(baseline_cfg), f"--model.init_args.student={spec}"]
            name = network_name({"model": {"init_args": {"student": json.loads(spec)}}})
            folder = args.run_dir / f"{baseline_cfg.stem}@{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}"
            wider += [(f"baseline@{name}", baseline_cfg, seed, overrides, folder / f"seed{seed}", False)
                      for seed in args.seeds]
    teacher_overrides = overrides_for(teacher_cfg)
    # A baseline run identical to the teacher's (the same resolved config, seed and data: e.g. FSP's student as
    # wide as the teacher, seed 0) is the teacher's run, not trained twice.
    same = [job for job in wider if job[2] == args.seeds[0]
            and same_training(resolve(teacher_cfg, *teacher_overrides), resolve(baseline_cfg, *job[3]))]
    wider = [job for job in wider if job not in same]
    students = []  # (key, config, seed, overrides, run folder, uses the teacher)
    for config in [baseline_cfg, *method_cfgs]:
        overrides = overrides_for(config)
        # A student that reads the teacher's checkpoint or route is stale once the teacher is retrained.
        uses_teacher = any(str(checkpoint_dir(teacher_dir)) in o for o in overrides)
        students += [(method_key(config), config, seed, overrides, args.run_dir / config.stem / f"seed{seed}",
                      uses_teacher) for seed in args.seeds]
        if config == baseline_cfg:
            students += wider
    teacher_job = ("teacher", teacher_cfg, args.seeds[0], teacher_overrides, teacher_dir)
    group = f"table {args.out}"  # --wandb: the table's runs in one group
    with wandb_group(group, args.wandb):
        runs = run_all(teacher_job, students, args.rerun, pool(args, args.run_dir))
    for job in same:  # in its place among the baselines
        print(f"[results] {label(job[0])} seed {job[2]}: the teacher's run (the same training), reused", flush=True)
        keys = [r.key for r in runs]
        at = keys.index(job[0]) if job[0] in keys else max(i for i, k in enumerate(keys) if k == "baseline") + 1
        runs.insert(at, dataclasses.replace(runs[0], key=job[0], seed=job[2]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot = args.out.with_suffix(".png")
    plot_histories(runs, plot, f"validation top-1 per epoch: {args.configs}")
    print(write_report(runs, args.out, plot, command, args.configs, args.note))
    if args.wandb:
        rows = summarize(runs)
        log_table(group, "results", ["method", "config", "network", "top-1 mean", "top-1 std", "delta vs baseline",
                                     "seeds", "wall s / run"],
                  [[label(key), row["config"].name, row["network"], row["mean"], row["std"], row["delta"], row["n"],
                    row["wall_s"]] for key, row in rows.items()])
    return runs


if __name__ == "__main__":
    main()
