"""``python -m lightning_kd.tools.bench``: training throughput of every method config, as a markdown table.

It times the real pipeline: the YAML config through the CLI, the Trainer, an in-memory uint8
datamodule augmented on the device, and the method's training step. Each config in
``--configs-dir`` (teacher configs excepted) runs ``--warmup`` + ``--steps`` training batches
on CIFAR-shaped data: synthetic images (default) or the CIFAR-10 JPEG tree (``--data-root``).
Teachers get fresh random weights (speed does not depend on what they learned). Validation,
logging and progress bars are off, so the figure is the training loop's.

Steady-state images/s counts the batches after the warm-up (compilation, allocator and cuDNN
autotuning happen there), timed between the ends of two training batches with a device
synchronisation on GPU, so the data path between batches is included.

``--ceiling ../shared/bench/kd_ceiling.py`` also runs the raw-PyTorch yardstick in the same
command (it needs CUDA) and reports each config's ratio to its KD step (methods with a teacher)
or student step (methods without one).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from pytorch_lightning import Callback

from lightning_kd.callbacks.route import write_route
from lightning_kd.cli import SHIPPED_CONFIGS
from lightning_kd.losses import kd_loss
from lightning_kd.models import build_network
from lightning_kd.tools.runner import build, data_overrides, device_name, resolve
COLUMNS = ["config", "method", "batch", "images/s", "peak memory (MiB)", "ceiling step", "ratio to ceiling"]


class ThroughputTimer(Callback):
    """Times training batches ``warmup + 1 .. warmup + steps``, then stops the fit.

    Args:
        warmup: batches run before the clock starts (>= 1).
        steps: batches timed.
        start_epoch: batches of earlier epochs are not counted at all (a stage that does not
            train the student, such as IE-KD's autoencoder stage).
    """

    def __init__(self, warmup: int, steps: int, start_epoch: int = 0):
        if warmup < 1 or steps < 1:
            raise ValueError(f"need warmup >= 1 and steps >= 1, got warmup={warmup}, steps={steps}")
        self.warmup, self.steps, self.start_epoch = warmup, steps, start_epoch
        self.batches, self.images = 0, 0
        self.start: Optional[float] = None
        self.seconds: Optional[float] = None

    @staticmethod
    def now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the clock must see the GPU's work, not the launch queue
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch < self.start_epoch:
            return
        self.batches += 1
        if self.batches == self.warmup:
            self.start = self.now()
        elif self.batches > self.warmup:
            self.images += batch[0].shape[0]
            if self.batches == self.warmup + self.steps:
                self.seconds = self.now() - self.start
                trainer.should_stop = True

    @property
    def images_per_second(self) -> float:
        if self.seconds is None:
            raise RuntimeError(f"the fit ended after {self.batches} batches, before warmup + steps = "
                               f"{self.warmup + self.steps}; use fewer steps or more training data.")
        return self.images / self.seconds


class ProfileSteps(ThroughputTimer):
    """Runs :mod:`torch.profiler` over the batches ThroughputTimer would time and keeps its table of
    the operators that cost most (self device time on GPU, self CPU time on CPU)."""

    def __init__(self, warmup: int, steps: int, start_epoch: int = 0, rows: int = 12):
        super().__init__(warmup, steps, start_epoch)
        self.rows, self.profiler, self.table = rows, None, ""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.batches == self.warmup and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        elif self.seconds is not None and self.profiler is not None and not self.table:
            self.profiler.__exit__(None, None, None)
            key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            self.table = self.profiler.key_averages().table(sort_by=key, row_limit=self.rows)


@dataclass
class Row:
    config: str
    method: str = ""
    batch: int = 0
    images_per_s: Optional[float] = None
    peak_mib: Optional[float] = None
    ceiling_step: str = "n/a"
    ratio: Optional[float] = None
    error: str = ""
    profile: str = ""

    def cells(self) -> list[str]:
        if self.error:
            return [self.config, self.method or "?", str(self.batch), "failed", "failed", "n/a", self.error]
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        return [self.config, self.method, str(self.batch), f"{self.images_per_s:.1f}", f"{self.peak_mib:.0f}",
                self.ceiling_step, ratio]


# Methods whose first stage trains no student (IE-KD's autoencoder): run that stage for one epoch,
# then time the student's distillation stage. FSP's stage 1 *is* its distillation: timed as is.
STUDENT_STAGE_STARTS = {"IEKD": 1}


def student_stage_start(cfg: dict) -> int:
    return STUDENT_STAGE_STARTS.get(cfg["model"]["class_path"].rsplit(".", 1)[-1], 0)


def method_configs(configs_dir: Path, names: Optional[list[str]] = None) -> list[Path]:
    """Every YAML in ``configs_dir`` except teachers (``teacher*``) and the peer-parallel twins of DML/IE-DML
    (``*_peer_parallel.yaml``: 2+ processes, and a one-GPU bench), or the ``names`` among them."""
    found = sorted(p for p in configs_dir.glob("*.yaml")
                   if not p.name.startswith("teacher") and not p.name.endswith("_peer_parallel.yaml"))
    if names:
        wanted = {Path(n).stem for n in names}
        found = [p for p in found if p.stem in wanted]
        missing = wanted - {p.stem for p in found}
        if missing:
            raise SystemExit(f"--configs: {sorted(missing)} not found in {configs_dir} "
                             f"(teacher configs are never benchmarked).")
    if not found:
        raise SystemExit(f"no method configs (*.yaml, not teacher*) in {configs_dir}")
    return found


def peak_memory_mib() -> float:
    """Peak GPU memory allocated since the last reset, or on CPU the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def run_ceiling(script: str, batch_size: int, iters: int) -> dict:
    """Run the raw-PyTorch ceiling script and return its final JSON line ({} with a note if not run)."""
    if not torch.cuda.is_available():
        return {"note": "skipped: the ceiling script measures CUDA steps and no GPU is visible"}
    done = subprocess.run([sys.executable, script, str(batch_size), str(iters)],
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"note": f"the ceiling script failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def raw_pytorch_reference(batch_size: int, iters: int, warmup: int = 2) -> dict:
    """The ceiling's fp32 student and KD steps in plain PyTorch on whatever device is here.

    ``kd_ceiling.py`` needs CUDA; this is the same yardstick (resnet32x4 -> resnet8x4, random
    data already on the device, SGD, CE 0.1 + KD 0.9 at T=4, no Lightning, no data loading) with
    this library's networks, so the Lightning loop's overhead can also be measured on a CPU.
    The result has the ceiling script's JSON shape.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    student = build_network("resnet8x4", 10, 3).to(device)
    teacher = build_network("resnet32x4", 10, 3).to(device).eval().requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def student_step():
        loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def kd_step():
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rates = {}
    for name, step in [("student_step", student_step), ("kd_step", kd_step)]:
        for _ in range(warmup):
            step()
        start = ThroughputTimer.now()
        for _ in range(iters):
            step()
        rates[name] = round(batch_size * iters / (ThroughputTimer.now() - start), 1)
    return {"batch": batch_size, "imgs_per_s": {"fp32": rates}, "source": f"raw PyTorch on {device_name()}"}


def ceiling_mode(precision: str, channels_last: bool, compile: bool) -> str:
    """The ceiling row matching our settings: fp32, bf16 + channels_last, or that compiled."""
    if not precision.startswith("bf16"):
        return "fp32"
    return "bf16_cl_compile" if compile else "bf16_cl"


def save_random_teacher(spec, num_classes: int, in_channels: int, folder: Path) -> str:
    """A randomly initialised teacher file in its own folder, with a two-anchor
    route beside it (RouteRecorder's layout), which RCO configs read next to ``teacher_ckpt``."""
    folder = folder / f"teacher_{abs(hash(json.dumps(spec, sort_keys=True, default=str)))}"
    path = folder / "teacher.pt"
    if not path.exists():
        folder.mkdir(parents=True)
        torch.manual_seed(0)
        state = build_network(spec, num_classes, in_channels).state_dict()
        torch.save(state, path)
        write_route(folder / "route", [state, state])
    return str(path)


def overrides(cfg: dict, args, folder: Path) -> list[str]:
    """Command-line overrides that turn a method config into a timed, quiet, offline run."""
    batches = args.warmup + args.steps
    start = student_stage_start(cfg)
    out = ["--trainer.accelerator=" + args.accelerator, "--trainer.devices=1",
           f"--trainer.max_epochs={start + batches}", "--trainer.limit_val_batches=0",
           "--trainer.num_sanity_val_steps=0", "--trainer.logger=false",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           f"--trainer.precision={args.precision}", f"--data.batch_size={args.batch_size}"]
    if args.data_root:
        out += data_overrides(Path(args.data_root), None, False, cfg["data"])
    else:  # one epoch holds every timed batch, so no epoch boundary falls inside the timing
        out += ["--data=lightning_kd.datamodules.SyntheticDataModule", "--data.num_classes=10",
                "--data.input_shape=[3, 32, 32]", f"--data.train_size={args.batch_size * batches}",
                f"--data.val_size={args.batch_size}", f"--data.test_size={args.batch_size}"]
    if start:
        # Exactly `start` epochs of stage 1 (a fraction of the run, see TwoStageDistillation).
        out.append(f"--model.init_args.stage1_fraction={start / (start + batches)}")
    if args.channels_last:
        out.append("--model.init_args.channels_last=true")
    if args.compile:
        out.append("--model.init_args.compile=true")
    if args.capture_step:
        out.append("--model.init_args.capture_step=true")
    model_args = cfg["model"].get("init_args", {})
    if model_args.get("teacher_ckpt"):
        path = save_random_teacher(model_args["teacher"], 10, 3, folder)
        out.append(f"--model.init_args.teacher_ckpt={path}")
    return out


def bench_config(config: Path, args, folder: Path, datamodules: dict, ceiling: dict) -> Row:
    row = Row(config.name, batch=args.batch_size)
    try:
        cfg = resolve(config)
        cli = build(config, *overrides(cfg, args, folder), f"--checkpoint.dirpath={folder / 'ckpt' / config.stem}")
        row.method = type(cli.model).__name__
        # The decoded images are shared between configs (the same data, decoded once).
        datamodule = datamodules.setdefault(type(cli.datamodule).__name__, cli.datamodule)
        timer = (ProfileSteps if args.profile else ThroughputTimer)(args.warmup, args.steps, student_stage_start(cfg))
        cli.trainer.callbacks.append(timer)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        cli.trainer.fit(cli.model, datamodule=datamodule)
        row.images_per_s, row.peak_mib = timer.images_per_second, peak_memory_mib()
        row.profile = getattr(timer, "table", "")
        step = "kd_step" if getattr(cli.model, "teacher", None) is not None else "student_step"
        mode = ceiling_mode(args.precision, args.channels_last, args.compile)
        reference = ceiling.get("imgs_per_s", {}).get(mode, {}).get(step)
        if reference:
            row.ceiling_step, row.ratio = f"{mode} {step} ({reference} img/s)", row.images_per_s / reference
    except (Exception, SystemExit) as err:  # one broken config must not hide the others' figures
        row.error = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")[:300]
    return row


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def report(rows: list[Row], args, ceiling: dict, command: str) -> str:
    memory = "peak GPU memory allocated" if torch.cuda.is_available() else "peak RSS of the whole process so far (CPU)"
    data = f"CIFAR-10 JPEG tree at {args.data_root}" if args.data_root else "synthetic uint8 3x32x32, 10 classes"
    parts = [f"Device: {device_name()}; torch {torch.__version__}; "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
             f"Command: `{command}`",
             f"Settings: batch {args.batch_size}, precision {args.precision}, channels_last "
             f"{args.channels_last}, compile {args.compile}, capture_step {args.capture_step}; {args.warmup} "
             f"warm-up + {args.steps} timed "
             f"training batches per config; data: {data}. Memory column: {memory}.",
             "", markdown_table(rows), ""]
    if args.profile:
        parts[2] += " Profiled (--profile): the images/s include the profiler's overhead."
        parts += [f"{row.config}: the operators that cost most\n\n```\n{row.profile.strip()}\n```\n"
                  for row in rows if row.profile]
    if ceiling:
        source = args.ceiling or "--raw-reference"
        parts.append(f"Ceiling (`{source}`, batch {args.batch_size}): `{json.dumps(ceiling)}`")
    return "\n".join(parts)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the text between ``<!-- bench:name -->`` markers in ``path`` (append if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse_args(argv=None):
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m lightning_kd.tools.bench", description=__doc__.split("\n")[0])
    p.add_argument("--configs-dir", default=str(SHIPPED_CONFIGS / "cifar10"),
                   help="folder whose method configs (*.yaml except teacher*) are timed")
    p.add_argument("--configs", nargs="*", help="only these config names (stems) from --configs-dir")
    p.add_argument("--data-root", help="CIFAR-10 ImageFolder tree (root/{train,test}/<class>/*.jpg); "
                                       "default: synthetic CIFAR-shaped data")
    p.add_argument("--batch-size", type=int, default=512 if gpu else 32)
    p.add_argument("--steps", type=int, default=50, help="timed training batches")
    p.add_argument("--warmup", type=int, default=10, help="untimed training batches first (>= 1)")
    p.add_argument("--precision", default="bf16-mixed" if gpu else "32-true",
                   help="Trainer precision (bf16-mixed on GPU by default)")
    p.add_argument("--channels-last", action="store_true", help="networks and inputs in channels_last")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    p.add_argument("--capture-step", action="store_true",
                   help="the whole training step as one compiled graph (model.init_args.capture_step)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--ceiling", help="path of kd_ceiling.py, run in the same command (needs CUDA)")
    p.add_argument("--ceiling-iters", type=int, default=50)
    p.add_argument("--raw-reference", action="store_true",
                   help="instead of --ceiling: time the same fp32 student/KD steps in plain PyTorch "
                        "here (works on CPU; compare at --precision 32-true)")
    p.add_argument("--profile", action="store_true",
                   help="run torch.profiler over the timed batches and add each config's costliest operators "
                        "to the report (its images/s then include the profiler's overhead)")
    p.add_argument("--out", help="markdown file to write the table into (e.g. docs/BENCHMARKS.md)")
    p.add_argument("--section", default="latest",
                   help="name of the marked section of --out that this run replaces")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.batch_size < 1:
        p.error("--warmup, --steps and --batch-size must all be >= 1")
    return args


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    command = "python -m lightning_kd.tools.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    configs = method_configs(Path(args.configs_dir), args.configs)
    if args.ceiling and args.raw_reference:
        raise SystemExit("--ceiling and --raw-reference are two yardsticks: choose one.")
    ceiling = {}
    if args.ceiling:
        ceiling = run_ceiling(args.ceiling, args.batch_size, args.ceiling_iters)
    elif args.raw_reference:
        ceiling = raw_pytorch_reference(args.batch_size, args.ceiling_iters)
    rows, datamodules = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for config in configs:
            rows.append(bench_config(config, args, Path(folder), datamodules, ceiling))
            print(" | ".join(rows[-1].cells()), flush=True)
    text = report(rows, args, ceiling, command)
    print(text)
    if args.out:
        write_section(Path(args.out), args.section, text)
    return rows


if __name__ == "__main__":
    main()
