"""The reports of the commands over configs: statistics over seeds, the results table, the report's header
and its runs sections, and the plot of validation accuracy per epoch. What one report holds is read from
the run records (:mod:`lightning_kd.tools.records`), so a report of reused runs reads the same."""
from __future__ import annotations

import datetime
import statistics
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from lightning_kd.tools.records import Run, label
from lightning_kd.tools.runner import device_name

# RepDistiller (Tian et al., CRD, ICLR 2020, Table 1), CIFAR-100 resnet32x4 -> resnet8x4, top-1 %.
REPDISTILLER_CIFAR100 = {"teacher": 79.42, "baseline": 72.50, "kd": 73.33, "fitnet": 73.50, "at": 73.44,
                         "fsp": 72.62, "rkd": 71.90}


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
