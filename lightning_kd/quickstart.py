"""The main job on the embedded digits data: teacher, student baseline, KD student; a table of test accuracies.

    python -m lightning_kd.quickstart            # about 30 s on 2 idle CPU cores

Each step is an ordinary ``lightning-kd fit`` of a YAML in ``configs/quickstart/``; the
teacher's ``best.ckpt`` becomes the KD run's ``teacher_ckpt``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from pytorch_lightning import Callback

from lightning_kd.cli import make_cli

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "quickstart"


def fit_and_test(config: Path, *overrides: str, callbacks: Sequence[Callback] = (),
                 save_config: Optional[Path] = None, ckpt_path: Optional[Path] = None) -> tuple[float, str]:
    """Fit one config, test its best checkpoint; return (test top-1, best checkpoint path).

    ``callbacks`` join the config's own; ``save_config`` receives the fully resolved config;
    ``ckpt_path`` resumes the fit from a checkpoint of the same run.
    """
    cli = make_cli(["-c", str(config), *overrides], run=False)
    if save_config is not None:
        Path(save_config).write_text(cli.parser.dump(cli.config, skip_none=False))
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    best = cli.trainer.checkpoint_callback.best_model_path
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
    return float(result[0]["test/acc"]), best


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="folder with teacher/baseline/kd.yaml")
    parser.add_argument("--max_epochs", type=int, default=None, help="override every run's epochs")
    args = parser.parse_args(argv)
    extra = [] if args.max_epochs is None else [f"--trainer.max_epochs={args.max_epochs}"]
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
