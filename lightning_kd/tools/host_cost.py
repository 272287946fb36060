"""``python -m lightning_kd.tools.host_cost``: the host work of a training step, library vs bare Lightning.

For every method config (default: the shipped CIFAR-10 ones, at tiny shapes: 3x8x8 synthetic images, batch
4, on the CPU) it counts, per training step, the Python calls (cProfile) and the dispatched ATen ops (a
TorchDispatchMode) of

- the library: the config through the CLI (``lightning-kd fit``'s model, data and callbacks), and
- a bare LightningModule running the same step (the same networks and forward hooks, the method's own loss
  terms and weights, the config's optimizer, its loss logged at every step as in Lightning's minimal example
  module; the same datamodule and Trainer flags), and the same without that log,

both through ``Trainer.fit``, over ``--steps`` whole loop iterations (fetch, transfer, augmentation,
hooks, step, logging) inside one epoch. Both counts are independent of the machine's load, so each is counted
once. Beside them, the CPU time per step (``time.process_time``, the median of interleaved rounds: at least
``--min-rounds``, at most ``--rounds``, until one more round moves no median by more than ``--tolerance``) of
the library, the bare module and a raw loop (no Lightning: the same batches, forwards, terms, backward and step).
The table records the date, the machine and its load average: the CPU times depend on it, the counts do not.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_kd.batch import Batch
from lightning_kd.cli import SHIPPED_CONFIGS
from lightning_kd.features import NetOutput
from lightning_kd.tools.bench import method_configs, save_random_teacher, student_stage_start, write_section
from lightning_kd.tools.runner import build, device_name, resolve

SHAPE, BATCH = (3, 8, 8), 4
COLUMNS = ["config", "method", "Python calls: library", "bare", "ratio (<= 1.15)", "bare without its log",
           "ATen ops: library", "bare", "excess (<= 5%)", "CPU ms/step: library", "bare", "raw loop", "rounds"]


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class StepCounter(pl.Callback):
    """Measures, per step, what runs in consecutive windows of ``steps`` training batches of the epoch ``epoch``:
    the first from the end of batch ``start`` to the end of batch ``start + steps``, the next from there on.
    ``what`` names each window's measure (one name, or several for as many windows): ``"calls"`` (Python calls,
    cProfile), ``"ops"`` (ATen ops, :class:`OpCounter`) or ``"time"`` (CPU seconds). One measure per window: the
    op counter's own Python calls would count as the step's, and either would slow the clock. Every window of
    ``log_every_n_steps`` batches holds the same steps (one of them logged), so each counts what a step costs
    on average. ``values`` maps each measure to its figure (``value``: the first window's); the fit stops after
    the last window."""

    def __init__(self, start: int, steps: int, what: str | tuple[str, ...], epoch: int = 0):
        self.start, self.steps, self.epoch = start, steps, epoch
        self.whats = (what,) if isinstance(what, str) else tuple(what)
        self.values: dict[str, float] = {}
        self.meter = None

    @property
    def value(self) -> Optional[float]:
        return self.values.get(self.whats[0])

    @property
    def batches(self) -> int:
        """The batches a fit must reach (index + 1) for every window to end."""
        return self.start + self.steps * len(self.whats) + 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch != self.epoch or batch_idx < self.start:
            return
        window, offset = (batch_idx - self.start) // self.steps, (batch_idx - self.start) % self.steps
        if offset:
            return
        if window > 0:  # the end of window - 1
            self.stop(self.whats[window - 1])
        if window < len(self.whats):
            self.begin(self.whats[window])
        elif window == len(self.whats):
            trainer.should_stop = True

    def begin(self, what: str) -> None:
        self.meter = {"calls": cProfile.Profile, "ops": OpCounter, "time": lambda: None}[what]()
        self.started = time.process_time()
        if what == "calls":
            self.meter.enable()
        elif what == "ops":
            self.meter.__enter__()

    def stop(self, what: str) -> None:
        seconds = time.process_time() - self.started
        if what == "calls":
            self.meter.disable()
            self.values[what] = pstats.Stats(self.meter).total_calls / self.steps
        elif what == "ops":
            self.meter.__exit__(None, None, None)
            self.values[what] = self.meter.ops / self.steps
        else:
            self.values[what] = seconds / self.steps
        self.meter = None


# ----------------------------------------------------------------- the bare module
def features(hooks) -> dict[str, Tensor]:
    """The features the library's forward hooks on a network recorded (they stay registered: the bare step
    reads them rather than adding hooks of its own beside them)."""
    return {} if hooks is None else hooks.pop()


class Bare(pl.LightningModule):
    """The library module's step without the library around it: its networks (shared, not copied) and their
    forward hooks, the method's loss terms (``distill_losses``; ``student_losses`` without a teacher) and
    weights, the config's optimizer."""

    def __init__(self, library: pl.LightningModule, log_loss: bool = True):
        super().__init__()
        self.library, self.log_loss = library, log_loss  # its trainable modules (student, adapters) are ours
        self.teacher = getattr(library, "teacher", None)
        self.weights = dict(library.loss_weights)
        # IE-KD's student stage (its stage 1 trains only the autoencoder); every other method's own terms
        self.terms = getattr(library, "stage2_losses", getattr(library, "distill_losses", None))

    def setup(self, stage: str) -> None:
        if self.library.data_needs:  # the method's own fit-time set-up (CRD: indices in the batches, its memory)
            self.library.trainer = self.trainer
            self.library.setup(stage)

    def training_step(self, batch, batch_idx):
        batch = Batch(*batch)
        student = NetOutput(self.library.student(batch.x), features(self.library.student_hooks))
        if self.teacher is None:
            losses = self.library.student_losses(student, batch)
        else:
            with torch.no_grad():
                teacher = NetOutput(self.teacher.net(batch.x), features(self.teacher.hooks))
            losses = self.terms(student, teacher, batch)
        loss = sum(self.weights[name] * value for name, value in losses.items())
        if self.log_loss:
            self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):  # the config's optimizer (its per-epoch LR schedule is left out)
        return self.library.make_optimizer(self.library.trainable_parameters())[0]


class BareMutual(pl.LightningModule):
    """Mutual learning without the library around it: every peer's forward, then in turn its terms
    (the method's ``peer_losses``), backward and step, and a refreshed no-grad forward for the later peers."""

    def __init__(self, library: pl.LightningModule, log_loss: bool = True):
        super().__init__()
        self.automatic_optimization = False
        self.library, self.log_loss = library, log_loss
        self.weights = dict(library.loss_weights)
        self.hooks = [library.student_hooks, *library.other_hooks]

    def forward_peer(self, i: int, x: Tensor) -> NetOutput:
        return NetOutput(self.library.peers[i](x), features(self.hooks[i]))

    def training_step(self, batch, batch_idx):
        batch = Batch(*batch)
        x = batch.x
        lib, peers = self.library, range(len(self.library.peers))
        own = [self.forward_peer(i, x) for i in peers]
        shown = [lib.shared_output(i, NetOutput(o.logits.detach(), {k: v.detach() for k, v in o.features.items()}))
                 for i, o in enumerate(own)]
        for i, optimizer in zip(peers, self.optimizers()):
            losses = lib.peer_losses(i, own[i], {j: s for j, s in enumerate(shown) if j != i}, batch)
            optimizer.zero_grad()
            loss = sum(self.weights[name] * value for name, value in losses.items())
            self.manual_backward(loss)
            optimizer.step()
            if i < len(peers) - 1:  # the later peers learn from its new predictions (schedule: sequential)
                with torch.no_grad(), lib.buffers_kept(lib.peers[i]):
                    shown[i] = lib.shared_output(i, self.forward_peer(i, x))
        if self.log_loss:
            self.log("train/loss", loss)  # the last peer's

    def configure_optimizers(self):
        return [self.library.make_optimizer([p for m in self.library.peer_modules(i) for p in m.parameters()])[0]
                for i in range(len(self.library.peers))]


def bare_module(library: pl.LightningModule, log_loss: bool = True) -> pl.LightningModule:
    """The bare module of the library module's step; ``log_loss``: it logs its loss at every step, as Lightning's
    minimal example module does (``self.log("train_loss", loss)`` in ``training_step``)."""
    return (BareMutual if hasattr(library, "peer_losses") else Bare)(library, log_loss)


def raw_loop(library: pl.LightningModule, datamodule, steps: int, warmup: int) -> float:
    """CPU seconds per step of the bare module's step in a plain loop (no Lightning), on the same batches."""
    bare = bare_module(library, log_loss=False)
    optimizers = bare.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    bare.optimizers = lambda: optimizers
    bare.manual_backward = lambda loss: loss.backward()
    batches = iter(datamodule.train_dataloader())
    normalize, augment = datamodule.normalize, lambda x: x
    if datamodule.pad or datamodule.flip:
        from lightning_kd.datamodules.base import augment as device_augment

        augment = lambda x: device_augment(x, datamodule.pad, datamodule.flip)  # noqa: E731
    library.train()
    for n in range(warmup + steps):
        if n == warmup:
            begin = time.process_time()
        x, *rest = next(batches)
        loss = bare.training_step((normalize(augment(x), datamodule.mean, datamodule.std), *rest), n)
        if loss is not None:
            optimizers[0].zero_grad()
            loss.backward()
            optimizers[0].step()
    return (time.process_time() - begin) / steps


# ----------------------------------------------------------------- one config
TRAINER_FLAGS = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)


def overrides(cfg: dict, batches: int, folder: Path) -> list[str]:
    """The config at tiny shapes on the CPU: synthetic 3x8x8 data, one epoch holding every counted batch (after
    the stage that trains no student, for IE-KD), quiet and offline."""
    start, train_size = student_stage_start(cfg), BATCH * (batches + 2)  # the epoch's last batch outside the windows
    out = ["--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.max_epochs={start + 2}",
           "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.logger=false",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           "--data=lightning_kd.datamodules.SyntheticDataModule", "--data.num_classes=10",
           f"--data.input_shape=[{', '.join(map(str, SHAPE))}]", f"--data.batch_size={BATCH}",
           f"--data.train_size={train_size}", f"--data.val_size={BATCH}", f"--data.test_size={BATCH}",
           f"--checkpoint.dirpath={folder / 'ckpt'}"]
    if start:
        out.append(f"--model.init_args.stage1_fraction={start / (start + 2)}")
    model_args = cfg["model"].get("init_args", {})
    if model_args.get("teacher_ckpt"):
        out.append(f"--model.init_args.teacher_ckpt={save_random_teacher(model_args['teacher'], 10, SHAPE[0], folder)}")
    return out + tiny_size_overrides(cfg, train_size)


def tiny_size_overrides(cfg: dict, train_size: int) -> list[str]:
    """What a config must change to run on the tiny training set. CRD's negatives (16,384, drawn among CIFAR's
    50,000 samples) exceed it: a quarter of the set keeps the same draw (without replacement among the other
    classes, as on CIFAR-10), so its step dispatches the same ops; its tensors, and so its CPU time, are smaller."""
    negatives = cfg["model"].get("init_args", {}).get("negatives")
    if cfg["model"]["class_path"].endswith(".CRD") and negatives is not None and negatives >= train_size:
        return [f"--model.init_args.negatives={train_size // 4}"]
    return []


def library_run(config: Path, folder: Path, batches: int) -> tuple[Callable, int, str]:
    """``run(callback, kind)``: builds the config's run anew and fits it with ``callback``; ``kind`` "library",
    or "bare" / "bare, no log" (the bare module over the library module's networks, epoch 0, in a Trainer of
    its own); the library's counted epoch (IE-KD's student stage follows an epoch of its autoencoder stage);
    and what the run changes beyond the tiny shapes (an empty string, or e.g. CRD's negatives)."""
    cfg = resolve(config)
    args = overrides(cfg, batches, folder)
    changed = ", ".join(a.removeprefix("--model.init_args.") for a in tiny_size_overrides(cfg, BATCH * (batches + 2)))

    def run(callback: pl.Callback, kind: str = "library"):
        torch.manual_seed(0)
        cli = build(config, *args, "--overwrite=true")
        if kind != "library":
            trainer = pl.Trainer(max_epochs=1, callbacks=[callback], default_root_dir=str(folder / "bare"),
                                 **TRAINER_FLAGS)
            module = bare_module(cli.model, log_loss=kind == "bare")
            trainer.fit(module, datamodule=cli.datamodule)
            return module, cli.datamodule
        cli.trainer.callbacks.append(callback)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return cli.model, cli.datamodule

    return run, student_stage_start(cfg), changed


def stable(times: dict[str, list[float]], min_rounds: int, tolerance: float) -> bool:
    """Whether every median of the rounds so far (at least ``min_rounds``) lies within ``tolerance`` (a fraction)
    of the median one round earlier: one more round would hardly move it."""
    if len(times["library"]) < max(min_rounds, 2):
        return False
    return all(abs(statistics.median(v) - statistics.median(v[:-1])) <= tolerance * statistics.median(v[:-1])
               for v in times.values())


def measure(config: Path, steps: int, rounds: int, warmup: int = 3, min_rounds: int = 2,
            tolerance: float = 0.05) -> list[str]:
    """The table row of one config. The counts do not depend on the machine's load, so each is counted once, in
    the first round's fits after its timed window (the library's and the bare module's: time, then calls, then
    ops, each over ``steps`` batches); further rounds time only, up to ``rounds``, until the medians are
    :func:`stable`."""
    counted = ("time", "calls", "ops")
    with tempfile.TemporaryDirectory() as tmp:
        run, epoch, changed = library_run(config, Path(tmp), warmup + len(counted) * steps)
        epochs = {"library": epoch, "bare": 0, "bare, no log": 0}

        def fit(kind: str, whats: tuple[str, ...]):
            meter = StepCounter(warmup, steps, whats, epochs[kind])
            module, datamodule = run(meter, kind)
            if len(meter.values) < len(whats):
                raise RuntimeError(f"{config.name}: the {kind} fit ended before {meter.batches} batches.")
            return module, datamodule, meter.values

        counts, times = {}, {"library": [], "bare": [], "raw loop": []}
        for round_ in range(rounds):  # interleaved: a change in the machine's load falls on all three alike
            for kind in ("library", "bare"):
                module, datamodule, values = fit(kind, counted if round_ == 0 else ("time",))
                times[kind].append(values["time"])
                if round_ == 0:
                    counts[kind] = values
                if kind == "library":
                    library, library_data = module, datamodule
            if round_ == 0:  # only its calls are shown
                counts["bare, no log"] = fit("bare, no log", ("calls",))[2]
            times["raw loop"].append(raw_loop(library, library_data, steps, warmup))
            print(f"{config.name} round {round_ + 1} CPU ms/step: "
                  + ", ".join(f"{kind} {1000 * v[-1]:.1f}" for kind, v in times.items()), flush=True)
            if stable(times, min_rounds, tolerance):
                break
    calls, ops = [counts["library"][what] / counts["bare"][what] for what in ("calls", "ops")]
    ms = {kind: 1000 * statistics.median(values) for kind, values in times.items()}
    return [config.name + (f" ({changed})" if changed else ""), type(library).__name__,
            f"{counts['library']['calls']:,.0f}", f"{counts['bare']['calls']:,.0f}", f"{calls:.2f}",
            f"{counts['bare, no log']['calls']:,.0f}", f"{counts['library']['ops']:,.0f}",
            f"{counts['bare']['ops']:,.0f}", f"{100 * (ops - 1):+.1f}%", f"{ms['library']:.1f}", f"{ms['bare']:.1f}",
            f"{ms['raw loop']:.1f}", str(len(times["library"]))]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lightning_kd.tools.host_cost", description=__doc__.split("\n")[0])
    p.add_argument("--configs-dir", default=str(SHIPPED_CONFIGS / "cifar10"))
    p.add_argument("--configs", nargs="*", help="only these config names (stems) from --configs-dir")
    p.add_argument("--steps", type=int, default=50, help="counted training steps (one log_every_n_steps period)")
    p.add_argument("--rounds", type=int, default=5, help="at most this many interleaved timing rounds (median)")
    p.add_argument("--min-rounds", type=int, default=2, help="at least this many (fewer if --rounds is lower)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="stop once one more round moved no median by more than this fraction")
    p.add_argument("--out", help="markdown file whose 'host-cost' section receives the table")
    return p.parse_args(argv)


def main(argv=None) -> list[list[str]]:
    args = parse_args(argv)
    command = "python -m lightning_kd.tools.host_cost " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    began, load_before = time.time(), os.getloadavg()[0]
    rows = []
    for config in method_configs(Path(args.configs_dir), args.configs):
        try:
            rows.append(measure(config, args.steps, args.rounds, min_rounds=args.min_rounds,
                                tolerance=args.tolerance))
        except Exception as err:  # noqa: BLE001 - one config that cannot run must not hide the others' figures
            message = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")[:200]
            rows.append([config.name, "failed", message] + ["n/a"] * (len(COLUMNS) - 3))
        print(" | ".join(rows[-1]), flush=True)
    text = (f"Command: `{command}` ({device_name()}; torch {torch.__version__}, Lightning {pl.__version__}). "
            f"Per training step, over {args.steps} steps of one epoch (one `log_every_n_steps` period at the "
            f"default 50), synthetic {'x'.join(map(str, SHAPE))} images, batch {BATCH}; CPU ms: median of "
            f"{args.min_rounds}-{args.rounds} interleaved rounds (column rounds). Run "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))}, {(time.time() - began) / 60:.1f} min; "
            f"load average (1 min) {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
            f"({os.cpu_count()} CPUs).\n\n{markdown(rows)}")
    print(text)
    if args.out:
        write_section(Path(args.out), "host-cost", text)
    return rows


if __name__ == "__main__":
    main()
