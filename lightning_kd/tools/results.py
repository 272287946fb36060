"""The results table: teacher, student baseline and every method of a config folder, over seeds.

    python -m lightning_kd.tools.results --configs configs/cifar10 \\
        --data-root ../shared/data/cifar10-jpeg.tar.gz --epochs 30 --seeds 0 1 --out docs/RESULTS.md
    python -m lightning_kd.tools.results --configs configs/quickstart --epochs 10 --out docs/RESULTS_quickstart.md

In order: the teacher config (``teacher*.yaml``), the student baseline (``baseline*.yaml``), then
every other YAML of the folder (the methods), each an ordinary fit + test of its config through
:func:`lightning_kd.tools.runner.fit_and_test`. The teacher is trained once (first seed); every
other config runs once per seed and distills from that teacher (``teacher_ckpt`` is overridden;
RCO reads the route the teacher recorded next to its checkpoints). ``--epochs N`` sets every
run's ``trainer.max_epochs``: the configs' schedules are fractions of the run (LR milestones,
stage 1 of two-stage methods, route anchors), so the short table keeps the papers' recipes in
shape. Writes a markdown report (mean +- std top-1 over seeds, delta vs the baseline, wall time
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
import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from lightning_kd.tools.options import (add_run_arguments, check_run_arguments, prepare_data_root,
                                        run_overrides)
from lightning_kd.tools.dashboards import log_table, wandb_group
from lightning_kd.tools.records import Run, checkpoint_dir, label, network_name, student_spec
from lightning_kd.tools.report import plot_histories, summarize, write_report
from lightning_kd.tools.runner import data_overrides, resolve
from lightning_kd.tools.scheduling import run_all

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
    parser.add_argument("--configs", type=Path, default=Path("configs/quickstart"),
                        help="config folder: teacher*.yaml, baseline*.yaml and the method configs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of every student config")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS.md"), help="markdown report (PNG beside it)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/results"), help="checkpoints and resolved configs")
    parser.add_argument("--only", nargs="+", default=None, metavar="KEY",
                        help="method keys to run besides teacher and baseline (e.g. kd fitnet)")
    parser.add_argument("--skip", nargs="*", default=["*_tv_*", "*_peer_parallel.yaml"],
                        help="config file-name patterns to leave out (by default the torchvision student and the "
                             "peer-parallel twins of DML/IE-DML, which need 2+ GPUs)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each in its own process (several small runs share one GPU): the "
                             "teacher beside the configs that need no teacher, then the others")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}.")
    return args


def main(argv=None) -> list[Run]:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python -m lightning_kd.tools.results " + shlex.join(argv)
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
        return extra + common

    wider = []  # baselines of the other student networks the methods train
    baseline_student = student_spec(resolved[baseline_cfg])
    for spec in dict.fromkeys(json.dumps(student_spec(resolved[c]), sort_keys=True) for c in method_cfgs):
        if json.loads(spec) != baseline_student:  # e.g. FSP's student, as wide as its teacher
            overrides = [*overrides_for(baseline_cfg), f"--model.init_args.student={spec}"]
            name = network_name({"model": {"init_args": {"student": json.loads(spec)}}})
            folder = args.run_dir / f"{baseline_cfg.stem}@{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}"
            wider += [(f"baseline@{name}", baseline_cfg, seed, overrides, folder / f"seed{seed}", False)
                      for seed in args.seeds]
    students = []  # (key, config, seed, overrides, run folder, uses the teacher)
    for config in [baseline_cfg, *method_cfgs]:
        overrides = overrides_for(config)
        # A student that reads the teacher's checkpoint or route is stale once the teacher is retrained.
        uses_teacher = any(str(checkpoint_dir(teacher_dir)) in o for o in overrides)
        students += [(method_key(config), config, seed, overrides, args.run_dir / config.stem / f"seed{seed}",
                      uses_teacher) for seed in args.seeds]
        if config == baseline_cfg:
            students += wider
    teacher_job = ("teacher", teacher_cfg, args.seeds[0], overrides_for(teacher_cfg), teacher_dir)
    group = f"table {args.out}"  # --wandb: the table's runs in one group
    with wandb_group(group, args.wandb):
        runs = run_all(teacher_job, students, args.jobs, args.rerun)
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
