"""Sweep config settings on the validation split: every combination x seed is fitted, and only its
best ``val/acc`` is read; the test split is never touched.

    python -m lightning_kd.tools.sweep -c configs/quickstart/at.yaml \\
        --set model.init_args.at_weight=0.1,1,10,100 --seeds 0 1 2 --jobs 2

``--set KEY=V1,V2,...`` may repeat (the grid is their product); ``KEY1,KEY2=V1,...`` gives
several keys the same value (e.g. the inheritance and exploration weights of IE-KD). It prints
mean +- std of the best validation top-1 per setting and the setting with the highest mean, and
writes every run to ``<run-dir>/sweep.csv``. Every setting is built before the first run trains (a typo in a
later value fails first); a run that fails is recorded with its error, the others go on, the summary covers
the finished ones and the command then exits with an error naming the failed runs. Pick with it; report test accuracy with the results
command afterwards.
"""
from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

from lightning_kd.tools.dashboards import log_table, wandb_group
from lightning_kd.tools.report import mean_std
from lightning_kd.tools.runner import best_checkpoint, build, finish_wandb
from lightning_kd.tools.scheduling import in_order


def parse_set(text: str) -> list[tuple[str, str]]:
    """``"a,b=1,2"`` -> ``[("a,b", "1"), ("a,b", "2")]``: one (keys, value) pair per value."""
    keys, sep, values = text.partition("=")
    if not sep or not keys or not values:
        raise argparse.ArgumentTypeError(f"--set takes KEY=V1,V2,... (e.g. model.init_args.at_weight=1,10), "
                                         f"got {text!r}")
    return [(keys, value) for value in values.split(",")]


def setting_args(setting: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"--{key}={value}" for keys, value in setting for key in keys.split(",")]


def setting_name(setting: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f"{keys.split(',')[0].split('.')[-1]}={value}" for keys, value in setting)


def check_settings(config: str, runs: list[dict]) -> None:
    """Build (parse and instantiate, nothing fitted or deleted) every setting's run before the first one trains:
    a typo in a later value fails now, naming its setting."""
    for run in {run["setting"]: run for run in runs}.values():
        try:
            build(config, *[o for o in run["overrides"] if o != "--overwrite=true"])
        except (Exception, SystemExit) as err:
            raise SystemExit(f"sweep: the setting {run['setting']!r} cannot run ({type(err).__name__}: {err}); "
                             f"nothing was trained: fix its value.") from err


def scored(config: str, overrides: list[str]) -> tuple[float, str]:
    """``(best val/acc, "")`` of a run, or ``(nan, the error)`` when it fails: the sweep goes on."""
    try:
        return best_val_acc(config, overrides), ""
    except Exception as err:  # a failed run (diverged, out of memory) is reported beside the finished ones
        return float("nan"), f"{type(err).__name__}: {err}"


def best_val_acc(config: str, overrides: list[str]) -> float:
    """Fit ``config`` and return the best monitored validation score (``val/acc``); no test."""
    cli = build(config, *overrides)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finish_wandb(cli.trainer)
    score = best_checkpoint(cli.trainer).best_model_score
    if score is None:
        raise ValueError(f"{config}: the run recorded no validation score; a sweep needs a validation split.")
    return float(score)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="the config to sweep")
    parser.add_argument("--set", type=parse_set, action="append", required=True, metavar="KEY=V1,V2",
                        help="a setting and its values (repeat for a grid)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/sweep"), help="checkpoints and sweep.csv")
    parser.add_argument("--override", action="append", default=[], metavar="ARG",
                        help="extra CLI override for every run, e.g. --override=--trainer.max_epochs=10")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--wandb", action="store_true",
                        help="keep the config's wandb logger: the runs in one group, the table as a wandb Table")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}.")

    runs = []
    for setting in itertools.product(*args.set):
        for seed in args.seeds:
            folder = args.run_dir / setting_name(setting).replace(" ", "_") / f"seed{seed}"
            overrides = [*setting_args(setting), f"--seed_everything={seed}", f"--checkpoint.dirpath={folder}",
                         "--overwrite=true", "--trainer.enable_progress_bar=false", "--summary=false",
                         *([] if args.wandb else ["--trainer.logger=false"]), *args.override]
            runs.append({"setting": setting_name(setting), "seed": seed, "overrides": overrides})

    check_settings(args.config, runs)
    group = f"sweep {Path(args.config).stem} {' x '.join(keys for keys, _ in (s[0] for s in args.set))}"
    with wandb_group(group, args.wandb):
        scores = in_order(scored, [(args.config, run["overrides"]) for run in runs], args.jobs)
        for run, (val_acc, error) in zip(runs, scores):
            run["val_acc"], run["error"] = val_acc, error
            result = f"failed: {error}" if error else f"best val top-1 {100 * val_acc:.2f}%"
            print(f"[sweep] {run['setting']} seed {run['seed']}: {result}", flush=True)

    args.run_dir.mkdir(parents=True, exist_ok=True)
    with open(args.run_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["setting", "seed", "val_acc", "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(runs)
    finished = [run for run in runs if not run["error"]]
    summary = {name: mean_std(100 * run["val_acc"] for run in finished if run["setting"] == name)
               for name in dict.fromkeys(run["setting"] for run in finished)}
    print(f"\n{args.config}: best validation top-1 %, mean +- std over the finished seeds of {args.seeds}")
    for name, (mean, std) in summary.items():
        print(f"  {name:40s} {mean:6.2f} +- {std:.2f}")
    if summary:
        print(f"highest mean: {max(summary, key=lambda n: summary[n][0])}")
    if args.wandb:
        log_table(group, "sweep", ["setting", "best val top-1 mean", "std", "seeds"],
                  [[name, mean, std, len(args.seeds)] for name, (mean, std) in summary.items()])
    failed = [f"{run['setting']} seed {run['seed']}" for run in runs if run["error"]]
    if failed:
        raise SystemExit(f"sweep: {len(failed)} run(s) failed ({', '.join(failed)}); the finished ones are in "
                         f"{args.run_dir / 'sweep.csv'}, the failures' errors too.")
    return runs


if __name__ == "__main__":
    main()
