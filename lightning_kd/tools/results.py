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

Resumable: each finished run leaves its record (``run.json``) beside its checkpoints in
``--run-dir``; the same command run again reuses every run whose config file content and
overrides are unchanged (and whose teacher is the same run), so an interrupted table is finished
by re-running the command. ``--rerun`` trains everything again.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import hashlib
import json
import multiprocessing
import os
import re
import shlex
import shutil
import statistics
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from lightning_kd.checkpoints import load_checkpoint_file
from lightning_kd.tools.bench import device_name
from lightning_kd.tools.runner import ValAccHistory, data_overrides, fit_and_test, resolve

# Row order of the table; configs are discovered from the folder, their file name's first word is the key.
METHOD_ORDER = ["teacher", "baseline", "kd", "fitnet", "at", "fsp", "rkd", "rco", "dml", "iekd", "iedml"]
LABELS = {"teacher": "teacher", "baseline": "student baseline", "kd": "KD", "fitnet": "FitNet", "at": "AT",
          "fsp": "FSP", "rkd": "RKD", "rco": "RCO", "dml": "DML", "iekd": "IE-KD", "iedml": "IE-DML"}
# RepDistiller (Tian et al., CRD, ICLR 2020, Table 1), CIFAR-100 resnet32x4 -> resnet8x4, top-1 %.
REPDISTILLER_CIFAR100 = {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "fitnet": 73.50, "at": 73.44,
                         "fsp": 72.62, "rkd": 71.90}


@dataclass
class Run:
    """One fit + test: what ran (config and overrides) and what it measured."""

    key: str
    config: Path
    seed: int
    overrides: list[str]
    test_acc: float = float("nan")
    wall_s: float = float("nan")
    history: list[float] = field(default_factory=list)
    resolved_config: Optional[Path] = None
    best_ckpt: str = ""
    network: str = ""
    config_sha256: str = ""  # of the config file's content when it ran
    teacher_finished: str = ""  # ``finished`` of the teacher run it distilled from ("" if none)
    finished: str = ""  # UTC time the run completed, ISO format
    device: str = ""


def network_name(cfg: dict) -> str:
    """The trained network of a resolved config, compactly: ``small_cnn(width=4)``; peer 0 for mutual learning."""
    init_args = cfg["model"].get("init_args") or {}
    peers = init_args.get("peers")
    spec = peers[0] if peers else init_args.get("student", "?")
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", "?")
        spec = f"{name}({', '.join(f'{k}={v}' for k, v in spec.items())})" if spec else name
    return f"{spec}, peer 0 of {len(peers)}" if peers else str(spec)


def student_spec(cfg: dict):
    """The trained network's spec of a resolved config (peer 0 for mutual learning)."""
    init_args = cfg["model"].get("init_args") or {}
    return init_args["peers"][0] if init_args.get("peers") else init_args.get("student")


def label(key: str) -> str:
    """The table's name for a row: ``baseline@<network>`` is the baseline trained on that network."""
    if key.startswith("baseline@"):
        return f"student baseline ({key.split('@', 1)[1]})"
    return LABELS.get(key, key)


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


def prepare_data_root(data_root: Path, out_dir: Path) -> Path:
    """A ``.tar.gz`` of an ImageFolder tree (as in ``shared/data``) is extracted once into ``out_dir``."""
    if not data_root.name.endswith(".tar.gz"):
        return data_root
    target = out_dir / "data"
    if not target.is_dir():
        with tarfile.open(data_root) as archive:
            archive.extractall(target, filter="data")
    tops = [d for d in target.iterdir() if d.is_dir()]
    if len(tops) != 1:
        raise ValueError(f"{data_root} should hold one top folder (<name>/train, <name>/test), found {tops}.")
    return tops[0]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: Sequence[Run]) -> dict[str, dict]:
    """Per key, in run order: top-1 mean/std in percent, seeds, mean wall time, delta vs the baseline of the
    same student network (None where there is none)."""
    keys = list(dict.fromkeys(r.key for r in runs))
    rows = {}
    for key in keys:
        mine = [r for r in runs if r.key == key]
        mean, std = mean_std([100 * r.test_acc for r in mine])
        rows[key] = {"mean": mean, "std": std, "n": len(mine), "wall_s": statistics.fmean(r.wall_s for r in mine),
                     "config": mine[0].config, "network": mine[0].network}
    # Each method against the baseline of its own student network (FSP's student may be wider).
    bases = {plain_network(row["network"]): row["mean"] for key, row in rows.items() if key.split("@")[0] == "baseline"}
    for key, row in rows.items():
        base = bases.get(plain_network(row["network"]))
        row["delta"] = None if base is None or key == "teacher" or key.startswith("baseline") else row["mean"] - base
    return rows


def plain_network(network: str) -> str:
    """``small_cnn(width=4), peer 0 of 2`` -> ``small_cnn(width=4)``: the network a baseline would train."""
    return network.split(", peer ")[0]


def markdown_table(rows: dict[str, dict], reference: Optional[dict[str, float]] = None) -> str:
    """The summary table; ``reference`` adds a column of published top-1 numbers."""
    head = ["method", "config", "network", "top-1 % (mean ± std)", "Δ vs baseline", "seeds", "wall time / run"]
    if reference:
        head.append("RepDistiller CIFAR-100 ref.")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key, row in rows.items():
        cells = [label(key), f"`{row['config'].name}`", row["network"], f"{row['mean']:.2f} ± {row['std']:.2f}",
                 "—" if row["delta"] is None else f"{row['delta']:+.2f}", str(row["n"]), f"{row['wall_s']:.0f} s"]
        if reference:
            cells.append(f"{reference[key]:.2f}" if key in reference else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_histories(runs: Sequence[Run], path: Path, title: str) -> None:
    """Validation top-1 per epoch, one line per method (mean over seeds), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    for key in dict.fromkeys(r.key for r in runs):
        curves = [r.history for r in runs if r.key == key and r.history]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        mean = [100 * statistics.fmean(c[i] for c in curves) for i in range(length)]
        ax.plot(range(1, length + 1), mean, marker="." if length < 40 else None, label=label(key),
                linestyle="--" if key in ("teacher", "baseline") else "-")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reference_applies(runs: Sequence[Run]) -> bool:
    """RepDistiller's column belongs to CIFAR-100 runs of resnet32x4 -> resnet8x4 only."""
    nets = {r.key: r.network for r in runs}
    if nets.get("teacher") != "resnet32x4" or nets.get("baseline") != "resnet8x4":
        return False
    baseline = next(r for r in runs if r.key == "baseline")
    if baseline.resolved_config is None or not Path(baseline.resolved_config).is_file():
        return False
    data = yaml.safe_load(Path(baseline.resolved_config).read_text()).get("data") or {}
    return str(data.get("class_path", "")).endswith("CIFAR100DataModule")


def report_header(runs: Sequence[Run], title: str, command: str, note: str = "") -> list[str]:
    """A report's title, device, date and command lines, then ``note``. Date and device come from the runs'
    records, so a report of reused runs reads the same."""
    import pytorch_lightning

    finished = [datetime.datetime.fromisoformat(r.finished) for r in runs if r.finished]
    date = (max(finished) if finished else datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    devices = ", ".join(dict.fromkeys(r.device for r in runs if r.device)) or device_name()
    parts = [
        f"# {title}", "",
        f"- Device: {devices}; torch {torch.__version__}, pytorch-lightning "
        f"{pytorch_lightning.__version__}",
        f"- Date: {date}",
        f"- Command: `{command}`", "",
    ]
    return parts + ([note, ""] if note else [])


def runs_sections(runs: Sequence[Run], name=None, column: str = "method", unit: str = "run") -> list[str]:
    """A report's "Runs" table (one row per run, its key shown as ``name(key)``, default :func:`label`)
    and its "Exact configs" list; ``column`` heads the key column, ``unit`` names what one run is."""
    name = name or label
    parts = ["## Runs", "",
             f"| {column} | seed | test top-1 % | best val top-1 % | epochs | wall time |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        best = f"{100 * max(r.history):.2f}" if r.history else "—"
        parts.append(f"| {name(r.key)} | {r.seed} | {100 * r.test_acc:.2f} | {best} | "
                     f"{len(r.history)} | {r.wall_s:.1f} s |")
    parts += ["", "## Exact configs", "",
              f"Each {unit} is `lightning-kd fit -c <config> <overrides>` followed by a test of its best "
              "checkpoint; the fully resolved config of each run is saved as `config.yaml` in its run folder.", ""]
    return parts + [f"- `{r.config}` {' '.join(f'`{o}`' for o in r.overrides)}" for r in runs]


def write_report(runs: Sequence[Run], out: Path, plot: Path, command: str, configs: Path, note: str = "") -> str:
    """The markdown report (returned and written to ``out``)."""
    rows, reference = summarize(runs), reference_applies(runs)
    parts = report_header(runs, f"Results: `{configs}`", command, note)
    parts += [
        "Test top-1 of the best-`val/acc` checkpoint. Δ is the method's mean minus the mean of the "
        "student baseline of the same network (trained for it where a method's student differs), in points. The teacher is trained once (first seed); every student run "
        "distills from it. Wall time covers fit + test of one run. Where the datamodule validates on "
        "the test split (the CIFAR configs, `val_size: 0`, the convention of RepDistiller), this is the "
        "best-epoch test accuracy that the KD papers report.", "",
        markdown_table(rows, REPDISTILLER_CIFAR100 if reference else None), "",
        *(["The last column quotes RepDistiller's published CIFAR-100 numbers for resnet32x4 -> resnet8x4 "
           "(240 epochs; Tian et al., *Contrastive Representation Distillation*, ICLR 2020, "
           "https://arxiv.org/abs/1910.10699): not measured here, and from the full 240-epoch schedule.", ""]
          if reference else []),
        f"![validation accuracy per epoch]({plot.name})", "",
        *runs_sections(runs),
    ]
    text = "\n".join(parts) + "\n"
    out.write_text(text)
    return text


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def resume_point(run_dir: Path, started: dict) -> tuple[Optional[Path], str]:
    """``last.ckpt`` of an unfinished run that was started with the same ``started`` settings
    (config content, overrides, teacher run), if it is readable; else ``(None, why not)``."""
    marker, last = run_dir / "started.json", checkpoint_dir(run_dir) / "last.ckpt"
    try:
        same = json.loads(marker.read_text()) == started
    except (OSError, ValueError):
        return None, ""
    if not same or not last.is_file():
        return None, "" if same else "its unfinished run had other settings: starting afresh"
    try:
        epoch = load_checkpoint_file(last, "last.ckpt")["epoch"]
    except (ValueError, KeyError) as err:  # e.g. cut off while being written: start again
        return None, f"its last.ckpt is unusable ({err}): starting afresh"
    return last, f"resuming after epoch {epoch}"


def record_path(run_dir: Path) -> Path:
    """Where a finished run's record lies: beside its ``checkpoints`` folder."""
    return run_dir / "run.json"


def save_record(run: Run, path: Path) -> None:
    """Write ``run`` as JSON atomically (a killed command leaves the old file or the new, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(run), indent=1, default=str))
    os.replace(tmp, path)


def load_record(path: Path) -> Run:
    """The :class:`Run` of a record; ValueError names what is wrong with an unreadable one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read it as JSON ({err})") from err
    names = {f.name for f in fields(Run)}
    if not isinstance(data, dict) or set(data) != names:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"it holds {got}, not the fields {sorted(names)}")
    run = Run(**data)
    run.config = Path(run.config)
    run.resolved_config = None if run.resolved_config is None else Path(run.resolved_config)
    return run


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reuse_check(path: Path, config_sha: str, overrides: list[str], teacher_finished: str) -> tuple[Optional[Run], str]:
    """The recorded run at ``path`` if it is the run asked for, else ``(None, why it has to run)``."""
    if not path.is_file():
        return None, "no record yet"
    try:
        run = load_record(path)
    except ValueError as err:
        return None, f"its record {path} is unreadable: {err}"
    if run.config_sha256 != config_sha:
        return None, "the config file changed since it ran"
    if run.overrides != overrides:
        before, now = set(run.overrides), set(overrides)
        return None, (f"its overrides changed: now {sorted(now - before) or 'the same set, reordered'}, "
                      f"was {sorted(before - now)}")
    if run.teacher_finished != teacher_finished:
        return None, "its teacher was trained again since it ran"
    if not Path(run.best_ckpt).is_file():
        return None, f"its checkpoint {run.best_ckpt} is gone"
    return run, ""


def run_one(key: str, config: Path, seed: int, overrides: list[str], run_dir: Path,
            teacher_finished: str = "", rerun: bool = False) -> Run:
    """Fit + test one config with ``overrides``; record its top-1, wall time and val/acc history.

    A record in ``run_dir`` of the same config content, overrides and teacher run
    (``teacher_finished``, "" for runs without a teacher) is returned instead, unless ``rerun``.
    """
    name = f"{label(key)} seed {seed}"
    ckpt_dir = checkpoint_dir(run_dir)
    overrides = [f"--seed_everything={seed}", f"--checkpoint.dirpath={ckpt_dir}", *overrides]
    config_sha = file_sha256(config)
    record = record_path(run_dir)
    recorded, why = (None, "--rerun") if rerun else reuse_check(record, config_sha, overrides, teacher_finished)
    if recorded is not None:
        print(f"[results] {name}: reused {record} (test top-1 {100 * recorded.test_acc:.2f}%)", flush=True)
        return recorded
    record.unlink(missing_ok=True)  # no record while its checkpoints are being replaced
    started = {"config_sha256": config_sha, "overrides": overrides, "teacher_finished": teacher_finished}
    resume, how = (None, "") if rerun else resume_point(run_dir, started)
    print(f"[results] {name}: running ({why}{'; ' + how if how else ''})", flush=True)
    if resume is None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # a fresh run starts clean, so best.ckpt is this run's
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "started.json").write_text(json.dumps(started))
    history = ValAccHistory(progress=f"[results] {name}")
    test_acc, best = fit_and_test(config, *overrides, callbacks=[history], save_config=run_dir / "config.yaml",
                                  ckpt_path=resume)
    run = Run(key, config, seed, overrides, test_acc, history.seconds(), history.history,
              run_dir / "config.yaml", best, network_name(yaml.safe_load((run_dir / "config.yaml").read_text())),
              config_sha,
              teacher_finished, datetime.datetime.now(datetime.timezone.utc).isoformat(), device_name())
    save_record(run, record)
    print(f"[results] {name}: test top-1 {100 * test_acc:.2f}% in {run.wall_s:.0f} s", flush=True)
    return run


def run_all(teacher_job: tuple, students: list[tuple], jobs: int, rerun: bool) -> list[Run]:
    """The teacher's run, then the students' (``(key, config, seed, overrides, run folder, uses the
    teacher)``) in the given order. With ``jobs > 1`` they run in that many processes at once: the
    teacher beside the students that need none, the others as soon as the teacher has finished."""
    def student_args(job, teacher_finished: str):
        *args, uses_teacher = job
        return (*args, teacher_finished if uses_teacher else "", rerun)

    if jobs == 1:
        teacher = run_one(*teacher_job, rerun=rerun)
        return [teacher] + [run_one(*student_args(job, teacher.finished)) for job in students]
    # Spawned, not forked: each run initialises its own CUDA context.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        teacher_future = pool.submit(run_one, *teacher_job, rerun=rerun)
        pending = {i: pool.submit(run_one, *student_args(job, ""))
                   for i, job in enumerate(students) if not job[-1]}
        teacher = teacher_future.result()
        pending.update({i: pool.submit(run_one, *student_args(job, teacher.finished))
                        for i, job in enumerate(students) if job[-1]})
        return [teacher] + [pending[i].result() for i in range(len(students))]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the tools over a config folder share (data, length, overrides, reuse, a note); see
    :func:`check_run_arguments` (which also checks the tool's own ``--configs``) and :func:`run_overrides`."""
    parser.add_argument("--epochs", type=int, default=None,
                        help="trainer.max_epochs of every run (the configs' schedules are fractions of it); "
                             "default: the configs' own")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="ImageFolder tree (root/{train,test}/<class>/...) or a .tar.gz of one, "
                             "read with lightning_kd.datamodules.ImageFolderDataModule")
    parser.add_argument("--cifar-root", default=None, help="torchvision CIFAR folder (data.init_args.root)")
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR (needs network)")
    parser.add_argument("--limit-train-batches", type=int, default=None, help="cap batches per epoch (smoke runs)")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra CLI override for every run, e.g. --override=--trainer.precision=bf16-mixed")
    parser.add_argument("--wandb", action="store_true", help="keep the configs' wandb logger (default: no logger)")
    parser.add_argument("--rerun", action="store_true",
                        help="train every run again (default: reuse the recorded runs of unchanged config + overrides)")
    parser.add_argument("--note", default="", help="a paragraph placed under the report's header")


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.configs.is_dir():
        parser.error(f"--configs {args.configs} is not a folder.")
    if args.data_root is not None and args.cifar_root is not None:
        parser.error("--data-root (ImageFolder) and --cifar-root (torchvision CIFAR) exclude each other; pick one.")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}.")


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of :func:`add_run_arguments` that every run gets (the data's are per config)."""
    common = ["--trainer.enable_progress_bar=false", "--summary=false", *args.override]
    if not args.wandb:
        common.append("--trainer.logger=false")
    if args.limit_train_batches is not None:
        common.append(f"--trainer.limit_train_batches={args.limit_train_batches}")
    if args.epochs is not None:
        common.append(f"--trainer.max_epochs={args.epochs}")
    return common


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
    runs = run_all(teacher_job, students, args.jobs, args.rerun)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot = args.out.with_suffix(".png")
    plot_histories(runs, plot, f"validation top-1 per epoch: {args.configs}")
    print(write_report(runs, args.out, plot, command, args.configs, args.note))
    return runs


if __name__ == "__main__":
    main()
