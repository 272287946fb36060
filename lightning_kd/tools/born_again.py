"""Born-Again Network generations and their ensembles, over seeds, in one command.

    python -m lightning_kd.tools.born_again --configs configs/ban_digits --generations 3 --seeds 0 1 2 \\
        --out docs/RESULTS_born_again.md

Furlanello et al., "Born-Again Neural Networks", ICML 2018 (https://arxiv.org/abs/1805.04770), sec. 3.1
and Fig. 1. The folder holds ``gen0*.yaml`` (a ``Supervised`` run: generation 0, the teacher trained
from the labels) and ``ban*.yaml`` (a ``BAN`` run). Each seed ``s`` is one chain: generation 0 is the
gen0 config; generation ``k >= 1`` is the BAN config whose teacher is generation ``k - 1`` of the same
chain, its network (as the config of that run states it) and its ``best.ckpt`` (highest ``val/acc``).
The student is the network the BAN config states (the same architecture in the shipped configs).
Generation ``k`` runs with seed ``s + 1000 k``: the paper starts every generation from another random
seed (Fig. 1). Then each chain's BAN ensembles, the mean probabilities of generations ``1..m`` for
``m = 2..K`` (the paper's Ens*2 and Ens*3, Table 2; the teacher is not a member), are scored on the
validation and test splits through a :class:`~lightning_kd.models.CheckpointEnsemble`, as ``lightning-kd
test`` scores one. With several seeds, a control: the ensemble of every chain's generation 0, the same
averaging without distillation (as many members as seeds). Nothing is chosen on test accuracy.

Resumable like the results command (each run is :func:`lightning_kd.tools.records.run_one`): a finished
generation is reused while its resolved config (includes expanded), overrides and teacher run are unchanged;
a retrained generation retrains the ones after it (their teacher changed). The ensembles are scored again every time
(one pass over the evaluation splits). Writes a markdown report and a PNG of validation accuracy per epoch.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional


from lightning_kd.tools.dashboards import wandb_group
from lightning_kd.tools.options import add_run_arguments, check_run_arguments, prepare_data_root, run_overrides
from lightning_kd.tools.records import Run, run_one, student_spec
from lightning_kd.tools.report import mean_std, plot_histories, report_header, runs_sections
from lightning_kd.tools.runner import build, data_overrides, finish_wandb, resolve

SEED_STEP = 1000  # generation k of chain s runs with seed s + SEED_STEP * k
ENSEMBLE = "lightning_kd.models.CheckpointEnsemble"


def discover(folder: Path) -> tuple[Path, Path]:
    """(generation 0 config, BAN config) of a folder: exactly one ``gen0*.yaml`` and one ``ban*.yaml``."""
    found = {pattern: sorted(Path(folder).glob(pattern)) for pattern in ("gen0*.yaml", "ban*.yaml")}
    for pattern, matches in found.items():
        if len(matches) != 1:
            raise ValueError(f"{folder} needs exactly one {pattern}, found {[m.name for m in matches]}: "
                             f"keep one per folder (gen0: a Supervised config, ban: a BAN config).")
    return found["gen0*.yaml"][0], found["ban*.yaml"][0]


def generation_key(k: int) -> str:
    return "gen 0 (Supervised)" if k == 0 else f"BAN gen {k}"


def teacher_overrides(teacher: Run, spec) -> list[str]:
    """The BAN run's teacher: the previous generation's network ``spec`` and its run's best checkpoint."""
    return [f"--model.init_args.teacher={json.dumps(spec)}", f"--model.init_args.teacher_ckpt={teacher.best_ckpt}"]


def run_chain(seed: int, gen0: Path, ban: Path, generations: int, run_dir: Path, overrides: dict[Path, list[str]],
              rerun: bool) -> list[Run]:
    """Generations 0..``generations`` of one chain, each distilled from the one before."""
    # The teachers' networks as the configs state them, never as a run's files on disk say (lightning_kd.trust).
    students = {c: student_spec(resolve(c, *overrides[c])) for c in (gen0, ban)}
    runs: list[Run] = []
    for k in range(generations + 1):
        config, extra = (gen0, []) if k == 0 else (ban, teacher_overrides(runs[-1], students[gen0 if k == 1 else ban]))
        runs.append(run_one(generation_key(k), config, seed + SEED_STEP * k, [*overrides[config], *extra],
                            run_dir / f"gen{k}" / f"seed{seed}", runs[-1].finished if runs else "", rerun))
    return runs


def score_ensemble(config: Path, members: list[str], overrides: list[str], folder: Path) -> tuple[float, float]:
    """(validation top-1, test top-1) of the mean probabilities of ``members``: ``config``'s data and trainer,
    its model's student replaced by a CheckpointEnsemble (a ``Supervised`` config, so nothing else is read)."""
    spec = {"name": ENSEMBLE, "checkpoints": members}
    cli = build(config, *overrides, f"--model.init_args.student={json.dumps(spec)}", f"--checkpoint.dirpath={folder}")
    val = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]["val/acc"]
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]
    finish_wandb(cli.trainer)
    return float(val), float(test)


def ensemble_key(last: int) -> str:
    return f"BAN ensemble, gens 1-{last}"


def table(rows: dict[str, dict[int, tuple[float, float]]], networks: dict[str, str]) -> str:
    """Markdown table: per row its test top-1 (mean ± std over chains), the paired difference to generation 0
    of the same chain (mean ± std), the mean validation top-1 and the chain count."""
    base = rows[generation_key(0)]
    lines = ["| run | network | test top-1 % (mean ± std) | Δ vs gen 0 (mean ± std) | val top-1 % (mean) | chains |",
             "|---|---|---|---|---|---|"]
    for key, by_chain in rows.items():
        test_mean, test_std = mean_std([100 * test for _, test in by_chain.values()])
        val_mean, _ = mean_std([100 * val for val, _ in by_chain.values()])
        if key == generation_key(0):
            delta = "—"
        else:
            d_mean, d_std = mean_std([100 * (by_chain[s][1] - base[s][1]) for s in by_chain])
            delta = f"{d_mean:+.2f} ± {d_std:.2f}"
        lines.append(f"| {key} | {networks[key]} | {test_mean:.2f} ± {test_std:.2f} | {delta} | {val_mean:.2f} | "
                     f"{len(by_chain)} |")
    return "\n".join(lines)


CONTROL = "generation 0 of every chain"  # the ensemble without distillation


def write_report(runs: list[Run], rows: dict, networks: dict, members: dict, control: Optional[tuple[float, float]],
                 out: Path, plot: Path, command: str, note: str) -> str:
    """The markdown report (returned and written to ``out``); ``control`` is the (val, test) top-1 of the
    ensemble of every chain's generation 0, where there are several chains."""
    parts = report_header(runs, "Born-Again Networks: generations and ensembles", command, note)
    parts += ["Test top-1 of each generation's best-`val/acc` checkpoint and of the BAN ensembles (the mean "
              "probabilities of generations 1..m of the same chain). Δ is the difference to generation 0 of the "
              "same chain, averaged over chains. Each chain is one seed s; generation k runs with seed "
              f"s + {SEED_STEP} k and distills from generation k - 1's best checkpoint of its chain.", "",
              table(rows, networks), ""]
    if control is not None:
        base, _ = mean_std([100 * test for _, test in rows[generation_key(0)].values()])
        count = len(members[CONTROL, "all"])
        parts += [f"Control, the same averaging without distillation: the mean probabilities of the {count} generation-0 "
                  f"networks (one per chain, trained independently): val top-1 {100 * control[0]:.2f}%, test top-1 "
                  f"{100 * control[1]:.2f}% ({100 * control[1] - base:+.2f} vs generation 0's mean). One ensemble of "
                  "all chains: a single number, not a mean over chains.", ""]
    parts += [f"![validation accuracy per epoch]({plot.name})", ""]
    parts += runs_sections(runs, name=str, column="run", unit="generation")
    parts += ["", "Ensemble members (`CheckpointEnsemble` checkpoints):", ""]
    parts += [f"- {key}{'' if chain == 'all' else f', chain {chain}'}: {', '.join(f'`{m}`' for m in files)}"
              for (key, chain), files in members.items()]
    text = "\n".join(parts) + "\n"
    out.write_text(text)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, default=Path("configs/ban_digits"),
                        help="folder with gen0*.yaml (Supervised) and ban*.yaml (BAN)")
    parser.add_argument("--generations", type=int, default=3, help="BAN generations after generation 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one chain of generations per seed")
    parser.add_argument("--out", type=Path, default=Path("docs/RESULTS_born_again.md"),
                        help="markdown report (PNG beside it)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/born_again"), help="checkpoints and resolved configs")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    if args.generations < 1:
        parser.error(f"--generations must be >= 1 (BAN generations after generation 0), got {args.generations}.")
    if max(args.seeds) >= SEED_STEP or min(args.seeds) < 0:
        parser.error(f"--seeds must lie in 0..{SEED_STEP - 1}: generation k of seed s runs with seed s + {SEED_STEP} k.")
    return args


def main(argv=None) -> dict[str, dict[int, tuple[float, float]]]:
    """Run the chains, score the ensembles, write the report; returns ``{row: {chain seed: (val, test)}}``."""
    args = parse_args(argv)
    command = "python -m lightning_kd.tools.born_again " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    gen0, ban = discover(args.configs)
    data_root: Optional[Path] = None if args.data_root is None else prepare_data_root(args.data_root, args.run_dir)
    common = run_overrides(args)
    overrides = {c: [*data_overrides(data_root, args.cifar_root, args.download, resolve(c)["data"]), *common]
                 for c in (gen0, ban)}
    chains = {}
    for seed in args.seeds:  # --wandb: each chain's generations in one group
        with wandb_group(f"born_again {args.configs.name} chain {seed}", args.wandb):
            chains[seed] = run_chain(seed, gen0, ban, args.generations, args.run_dir, overrides, args.rerun)

    runs = [run for seed in args.seeds for run in chains[seed]]
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    networks, members = {}, {}
    for k in range(args.generations + 1):
        key = generation_key(k)
        rows[key] = {seed: (max(chain[k].history, default=float("nan")), chain[k].test_acc)
                     for seed, chain in chains.items()}
        networks[key] = chains[args.seeds[0]][k].network
    for last in range(2, args.generations + 1):
        key = ensemble_key(last)
        rows[key], networks[key] = {}, f"mean of {last} × {networks[generation_key(last)]}"
        for seed, chain in chains.items():
            members[key, seed] = [r.best_ckpt for r in chain[1:last + 1]]
            rows[key][seed] = score_ensemble(gen0, members[key, seed], overrides[gen0],
                                             args.run_dir / f"ensemble_1-{last}" / f"seed{seed}")
            print(f"[born_again] {key}, chain {seed}: val top-1 {100 * rows[key][seed][0]:.2f}%, "
                  f"test top-1 {100 * rows[key][seed][1]:.2f}%", flush=True)

    control = None
    if len(args.seeds) > 1:
        members[CONTROL, "all"] = [chains[seed][0].best_ckpt for seed in args.seeds]
        control = score_ensemble(gen0, members[CONTROL, "all"], overrides[gen0], args.run_dir / "ensemble_gen0")
        print(f"[born_again] ensemble of {CONTROL}: val top-1 {100 * control[0]:.2f}%, test top-1 "
              f"{100 * control[1]:.2f}%", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot = args.out.with_suffix(".png")
    plot_histories(runs, plot, f"validation top-1 per epoch: {args.configs}, mean over chains")
    print(write_report(runs, rows, networks, members, control, args.out, plot, command, args.note))
    return rows


if __name__ == "__main__":
    main()
