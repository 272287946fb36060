"""``python -m lightning_kd.tools.host_cost``: the host work of a training step, library vs bare Lightning.

For every method config (default: the shipped CIFAR-10 ones, at tiny shapes: 3x8x8 synthetic images, batch
4, on the CPU) it counts, per training step, the Python calls (cProfile) and the dispatched ATen ops (a
TorchDispatchMode) of

- the library: the config through the CLI (``lightning-kd fit``'s model, data and callbacks), and
- a bare LightningModule running the same step (the same networks and forward hooks, the method's own loss
  terms and weights, the config's optimizer, its loss logged at every step as in Lightning's minimal example
  module; the same datamodule and Trainer flags), and the same without that log,

both through ``Trainer.fit``, over ``--steps`` whole loop iterations (fetch, transfer, augmentation,
hooks, step, logging) inside one epoch. Both counts are independent of the machine's load. Beside them, the
CPU time per step (``time.process_time``, the median over ``--rounds`` interleaved rounds) of the library,
the bare module and a raw loop (no Lightning: the same batches, forwards, terms, backward and step).
"""
from __future__ import annotations

import argparse
import cProfile
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
           "ATen ops: library", "bare", "excess (<= 5%)", "CPU ms/step: library", "bare", "raw loop"]


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class StepCounter(pl.Callback):
    """Measures what runs between the end of training batch ``start`` (of the epoch ``epoch``) and the end of
    batch ``start + steps``, per step: ``what`` is ``"calls"`` (Python calls, cProfile), ``"ops"`` (ATen ops,
    :class:`OpCounter`) or ``"time"`` (CPU seconds). One at a time: the op counter's own Python calls would
    count as the step's, and either would slow the clock."""

    def __init__(self, start: int, steps: int, what: str, epoch: int = 0):
        self.start, self.steps, self.what, self.epoch = start, steps, what, epoch
        self.value: Optional[float] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch != self.epoch:
            return
        if batch_idx == self.start:
            self.meter = {"calls": cProfile.Profile, "ops": OpCounter, "time": lambda: None}[self.what]()
            self.begin = time.process_time()
            if self.what == "calls":
                self.meter.enable()
            elif self.what == "ops":
                self.meter.__enter__()
        elif batch_idx == self.start + self.steps:
            seconds = time.process_time() - self.begin
            if self.what == "calls":
                self.meter.disable()
                self.value = pstats.Stats(self.meter).total_calls / self.steps
            elif self.what == "ops":
                self.meter.__exit__(None, None, None)
                self.value = self.meter.ops / self.steps
            else:
                self.value = seconds / self.steps
            trainer.should_stop = True


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
    start = student_stage_start(cfg)
    out = ["--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.max_epochs={start + 2}",
           "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.logger=false",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           "--data=lightning_kd.datamodules.SyntheticDataModule", "--data.num_classes=10",
           f"--data.input_shape=[{', '.join(map(str, SHAPE))}]", f"--data.batch_size={BATCH}",
           f"--data.train_size={BATCH * (batches + 2)}", f"--data.val_size={BATCH}", f"--data.test_size={BATCH}",
           f"--checkpoint.dirpath={folder / 'ckpt'}"]
    if start:
        out.append(f"--model.init_args.stage1_fraction={start / (start + 2)}")
    model_args = cfg["model"].get("init_args", {})
    if model_args.get("teacher_ckpt"):
        out.append(f"--model.init_args.teacher_ckpt={save_random_teacher(model_args['teacher'], 10, SHAPE[0], folder)}")
    return out


def library_run(config: Path, folder: Path, batches: int) -> tuple[Callable, int]:
    """``run(callback, kind)``: builds the config's run anew and fits it with ``callback``; ``kind`` "library",
    or "bare" / "bare, no log" (the bare module over the library module's networks, epoch 0, in a Trainer of
    its own); and the library's counted epoch (IE-KD's student stage follows an epoch of its autoencoder stage)."""
    cfg = resolve(config)
    args = overrides(cfg, batches, folder)

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

    return run, student_stage_start(cfg)


def measure(config: Path, steps: int, rounds: int, warmup: int = 3) -> list[str]:
    """The table row of one config."""
    with tempfile.TemporaryDirectory() as tmp:
        run, epoch = library_run(config, Path(tmp), warmup + steps)
        epochs = {"library": epoch, "bare": 0, "bare, no log": 0}

        def per_step(kind: str, what: str):
            meter = StepCounter(warmup, steps, what, epochs[kind])
            module, _ = run(meter, kind)
            if meter.value is None:
                raise RuntimeError(f"{config.name}: the {kind} fit ended before {warmup + steps + 1} batches.")
            return module, meter.value

        counts = {(kind, what): per_step(kind, what)[1] for kind in epochs for what in ("calls", "ops")}
        times = {"library": [], "bare": [], "raw loop": []}
        for _ in range(rounds):  # interleaved: a change in the machine's load falls on all three alike
            for kind in ("library", "bare"):
                module, seconds = per_step(kind, "time")
                times[kind].append(seconds)
            model, datamodule = run(StepCounter(0, 1, "time", epoch))  # set up, then stopped
            times["raw loop"].append(raw_loop(model, datamodule, steps, warmup))
    calls, ops = [counts["library", what] / counts["bare", what] for what in ("calls", "ops")]
    ms = {kind: 1000 * statistics.median(values) for kind, values in times.items()}
    return [config.name, type(module.library).__name__, f"{counts['library', 'calls']:,.0f}",
            f"{counts['bare', 'calls']:,.0f}", f"{calls:.2f}", f"{counts['bare, no log', 'calls']:,.0f}",
            f"{counts['library', 'ops']:,.0f}", f"{counts['bare', 'ops']:,.0f}", f"{100 * (ops - 1):+.1f}%",
            f"{ms['library']:.1f}", f"{ms['bare']:.1f}", f"{ms['raw loop']:.1f}"]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m lightning_kd.tools.host_cost", description=__doc__.split("\n")[0])
    p.add_argument("--configs-dir", default=str(SHIPPED_CONFIGS / "cifar10"))
    p.add_argument("--configs", nargs="*", help="only these config names (stems) from --configs-dir")
    p.add_argument("--steps", type=int, default=50, help="counted training steps (one log_every_n_steps period)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median)")
    p.add_argument("--out", help="markdown file whose 'host-cost' section receives the table")
    return p.parse_args(argv)


def main(argv=None) -> list[list[str]]:
    args = parse_args(argv)
    command = "python -m lightning_kd.tools.host_cost " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    rows = []
    for config in method_configs(Path(args.configs_dir), args.configs):
        try:
            rows.append(measure(config, args.steps, args.rounds))
        except Exception as err:  # noqa: BLE001 - one config that cannot run must not hide the others' figures
            message = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")[:200]
            rows.append([config.name, "failed", message] + ["n/a"] * (len(COLUMNS) - 3))
        print(" | ".join(rows[-1]), flush=True)
    text = (f"Command: `{command}` ({device_name()}; torch {torch.__version__}, Lightning {pl.__version__}). "
            f"Per training step, over {args.steps} steps of one epoch (one `log_every_n_steps` period at the "
            f"default 50), synthetic {'x'.join(map(str, SHAPE))} images, batch {BATCH}; CPU ms: median of "
            f"{args.rounds} interleaved rounds.\n\n{markdown(rows)}")
    print(text)
    if args.out:
        write_section(Path(args.out), "host-cost", text)
    return rows


if __name__ == "__main__":
    main()
