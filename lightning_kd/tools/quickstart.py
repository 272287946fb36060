"""The main job on the embedded digits data: a teacher, then a student baseline and a KD student over
three seeds; one line per run and a table of test accuracies.

    python -m lightning_kd.quickstart            # about 30 s on 2 idle CPU cores

Each run is an ordinary ``lightning-kd fit`` + ``test`` of a shipped config in ``configs/quickstart/``
(the teacher's ``best.ckpt`` becomes the KD runs' ``teacher_ckpt``), with two settings of its own:

- 20 training images per class (``data.init_args.train_per_class``), where distillation matters:
  chosen on the validation split, never on test. Over seeds 0-2, KD's best validation accuracy
  beat the baseline's by 6.30 points with 20 images per class, by 2.41 with 50 and by 1.30 with all
  (about 125); the test split was not looked at.
- The teacher goes where the configs' ``teacher_ckpt`` reads it (``runs/quickstart/teacher``), so
  ``lightning-kd fit -c configs/quickstart/kd.yaml`` finds it afterwards.
- One torch thread per process, so every machine prints the same numbers whatever its core count
  (CPU results change with the thread count); on small CPU data it is also the fastest setting.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import warnings
from pathlib import Path

import torch

from lightning_kd.cli import SHIPPED_CONFIGS
from lightning_kd.tools.runner import ValAccHistory, fit_and_test, resolve

TRAIN_PER_CLASS = 20
SEEDS = (0, 1, 2)
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--summary=false",
         "--overwrite=true", "--threads=1"]


def quietly():
    """Lightning's info lines and its advice for big data are noise here: one line per run instead."""
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|log_every_n_steps|LeafSpec|"
                                              r"exists and is not empty).*")


def run(label: str, config: Path, seed: int, *overrides: str, folder: str = "") -> tuple[float, str]:
    """Fit + test one config into ``folder`` (default ``runs/quickstart/<config>/seed<seed>``); print one
    line; return its test top-1 and best checkpoint."""
    name = f"quickstart-{config.stem}-seed{seed}"
    history = ValAccHistory()
    folder = folder or f"runs/quickstart/{config.stem}/seed{seed}"
    acc, best_ckpt = fit_and_test(config, *QUIET, f"--seed_everything={seed}", f"--trainer.logger.init_args.name={name}",
                                  f"--checkpoint.dirpath={folder}", *overrides, callbacks=[history])
    best = max(range(len(history.history)), key=history.history.__getitem__)
    print(f"{label:<20} seed {seed}: {len(history.history)} epochs, best val {100 * history.history[best]:.2f}% "
          f"(epoch {best}), test {100 * acc:.2f}%, {history.seconds():.0f} s", flush=True)
    return acc, best_ckpt


def main(argv=None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, default=SHIPPED_CONFIGS / "quickstart",
                        help="folder with teacher/baseline/kd.yaml")
    parser.add_argument("--max_epochs", type=int, default=None, help="override every run's epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quietly()
    extra = [f"--data.init_args.train_per_class={TRAIN_PER_CLASS}",
             *([] if args.max_epochs is None else [f"--trainer.max_epochs={args.max_epochs}"])]
    # The teacher where the shipped configs read it (their teacher_ckpt): `lightning-kd fit -c
    # configs/quickstart/kd.yaml` distills from it afterwards.
    teacher, teacher_ckpt = run("teacher", args.configs / "teacher.yaml", SEEDS[0], *extra,
                                folder=resolve(args.configs / "teacher.yaml")["checkpoint"]["dirpath"])
    rows = {"teacher": [teacher],
            "student baseline": [run("student baseline", args.configs / "baseline.yaml", s, *extra)[0] for s in SEEDS],
            "student KD": [run("student KD", args.configs / "kd.yaml", s, *extra,
                               f"--model.init_args.teacher_ckpt={teacher_ckpt}")[0] for s in SEEDS]}
    print(f"\nTest top-1 on the embedded digits (360 held-out images; {TRAIN_PER_CLASS} training images per class)")
    print(f"| {'run':<16} | {'seeds':<5} | {'test acc (mean ± std)':>21} |\n|{'-' * 18}|{'-' * 7}|{'-' * 23}|")
    for name, accs in rows.items():
        spread = f" ± {100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        print(f"| {name:<16} | {len(accs):<5} | {f'{100 * statistics.mean(accs):.2f}%{spread}':>21} |")
    gain = 100 * (statistics.mean(rows["student KD"]) - statistics.mean(rows["student baseline"]))
    print(f"KD - baseline: {gain:+.2f} points (mean over seeds {', '.join(map(str, SEEDS))})")
    return rows


if __name__ == "__main__":
    main()
