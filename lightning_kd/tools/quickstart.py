"""The main job on the embedded digits data: teacher, student baseline, KD student; a table of test accuracies.

    python -m lightning_kd.quickstart            # about 30 s on 2 idle CPU cores

Each step is an ordinary ``lightning-kd fit`` of a shipped config in ``configs/quickstart/``; the
teacher's ``best.ckpt`` becomes the KD run's ``teacher_ckpt``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lightning_kd.cli import SHIPPED_CONFIGS
from lightning_kd.tools.runner import fit_and_test


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, default=SHIPPED_CONFIGS / "quickstart",
                        help="folder with teacher/baseline/kd.yaml")
    parser.add_argument("--max_epochs", type=int, default=None, help="override every run's epochs")
    args = parser.parse_args(argv)
    # The quickstart starts over in its own folders (runs/quickstart/...) every time it runs.
    extra = ["--overwrite=true", *([] if args.max_epochs is None else [f"--trainer.max_epochs={args.max_epochs}"])]
    teacher_acc, teacher_ckpt = fit_and_test(args.configs / "teacher.yaml", *extra)
    baseline_acc, _ = fit_and_test(args.configs / "baseline.yaml", *extra)
    kd_acc, _ = fit_and_test(args.configs / "kd.yaml", *extra, f"--model.init_args.teacher_ckpt={teacher_ckpt}")
    rows = {"teacher": teacher_acc, "student baseline": baseline_acc, "student KD": kd_acc}
    print("\nTest top-1 on the embedded digits data (360 held-out images)")
    print(f"| {'run':<16} | {'test acc':>8} |\n|{'-' * 18}|{'-' * 10}|")
    for name, acc in rows.items():
        print(f"| {name:<16} | {100 * acc:7.2f}% |")
    print(f"KD - baseline: {100 * (kd_acc - baseline_acc):+.2f} points")
    return rows


if __name__ == "__main__":
    main()
