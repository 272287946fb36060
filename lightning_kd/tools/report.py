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

from lightning_kd.tools.options import stage1_epochs
from lightning_kd.tools.records import Run, label
from lightning_kd.tools.runner import device_name

# Published CIFAR-100 top-1 % of the benchmark grid's pairs (configs/_base/pairs), by pair and method key.
CRD_SOURCE = ("Tian et al., Contrastive Representation Distillation, ICLR 2020, Tables 1 and 2 "
              "(https://arxiv.org/abs/1910.10699; RepDistiller's README)")
DKD_SOURCE = ("Zhao et al., Decoupled Knowledge Distillation, CVPR 2022, Tables 1 and 2 "
              "(https://arxiv.org/abs/2203.08679; mdistiller's README)")
_CRD_PAIRS = ["wrn_40_2_wrn_16_2", "wrn_40_2_wrn_40_1", "resnet56_resnet20", "resnet110_resnet20", "resnet110_resnet32",
              "resnet32x4_resnet8x4", "vgg13_vgg8", "vgg13_MobileNetV2", "ResNet50_MobileNetV2", "ResNet50_vgg8",
              "resnet32x4_ShuffleNetV1", "resnet32x4_ShuffleNetV2", "wrn_40_2_ShuffleNetV1"]
_CRD_ROWS = {  # in _CRD_PAIRS' order; None: N/A in the paper
    "teacher": [75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64, 74.64, 79.34, 79.34, 79.42, 79.42, 75.61],
    "baseline": [73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36, 64.60, 64.60, 70.36, 70.50, 71.82, 70.50],
    "kd": [74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98, 67.37, 67.35, 73.81, 74.07, 74.45, 74.83],
    "fitnet": [73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02, 64.14, 63.16, 70.69, 73.59, 73.54, 73.73],
    "at": [74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43, 59.40, 58.58, 71.84, 71.73, 72.73, 73.32],
    "rkd": [73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48, 64.52, 64.43, 71.50, 72.28, 73.21, 72.21],
    "fsp": [72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23, None, None, None, None, None, None],
    "crd": [75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94, 69.73, 69.11, 74.30, 75.11, 75.65, 76.05],
}
CRD_CIFAR100 = {pair: {key: row[i] for key, row in _CRD_ROWS.items() if row[i] is not None}
                for i, pair in enumerate(_CRD_PAIRS)}
# DKD's own row (its other rows quote CRD's); mdistiller's README heads the last column "ResNet32x4 MobileNet-V2",
# the paper's Table 2 "ResNet32x4 ShuffleNet-V2" (its KD figure, 74.45, is CRD's for that pair).
DKD_CIFAR100 = {"resnet56_resnet20": 71.97, "resnet110_resnet32": 74.11, "resnet32x4_resnet8x4": 76.32,
                "wrn_40_2_wrn_16_2": 76.23, "wrn_40_2_wrn_40_1": 74.81, "vgg13_vgg8": 74.68,
                "resnet32x4_ShuffleNetV1": 76.45, "wrn_40_2_ShuffleNetV1": 76.70, "vgg13_MobileNetV2": 69.71,
                "ResNet50_MobileNetV2": 70.35, "resnet32x4_ShuffleNetV2": 77.07}
# RepDistiller's column of the folder tables (CIFAR-100 resnet32x4 -> resnet8x4).
REPDISTILLER_CIFAR100 = {k: v for k, v in CRD_CIFAR100["resnet32x4_resnet8x4"].items() if k != "crd"}


def published(pair: str, key: str) -> Optional[tuple[float, str]]:
    """The published top-1 of ``key`` (a method block's name) on ``pair``, and which paper: CRD or DKD."""
    if key == "dkd":
        return (DKD_CIFAR100[pair], "DKD") if pair in DKD_CIFAR100 else None
    value = CRD_CIFAR100.get(pair, {}).get(key)
    return None if value is None else (value, "CRD")


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
                     "config": mine[0].config, "network": mine[0].network, "epochs": epochs_label(mine[0])}
    # Each method against the baseline of its own student network (FSP's student may be wider).
    bases = {plain_network(row["network"]): row["mean"] for key, row in rows.items() if key.split("@")[0] == "baseline"}
    for key, row in rows.items():
        base = bases.get(plain_network(row["network"]))
        row["delta"] = None if base is None or key == "teacher" or key.startswith("baseline") else row["mean"] - base
    return rows


def epochs_label(run: Run) -> str:
    """The student's epochs of a run, and a stage on top that does not train the whole student: ``240 + 30``."""
    if run.resolved_config is None or not Path(run.resolved_config).is_file():
        return "—"
    stage1, student = stage1_epochs(yaml.safe_load(Path(run.resolved_config).read_text()))
    return f"{student} + {stage1}" if stage1 else str(student)


def plain_network(network: str) -> str:
    """``small_cnn(width=4), peer 0 of 2`` -> ``small_cnn(width=4)``: the network a baseline would train."""
    return network.split(", peer ")[0]


def markdown_table(rows: dict[str, dict], reference: Optional[dict[str, float]] = None) -> str:
    """The summary table; ``reference`` adds a column of published top-1 numbers."""
    head = ["method", "config", "network", "top-1 % (mean ± std)", "Δ vs baseline", "seeds", "wall time / run",
            "epochs (student + stage 1)"]
    if reference:
        head.append("RepDistiller CIFAR-100 ref.")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key, row in rows.items():
        cells = [label(key), f"`{row['config'].name}`", row["network"], f"{row['mean']:.2f} ± {row['std']:.2f}",
                 "—" if row["delta"] is None else f"{row['delta']:+.2f}", str(row["n"]), f"{row['wall_s']:.0f} s",
                 row.get("epochs", "—")]
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


def grid_table(cells: dict[tuple[str, str], list[Run]], pairs: dict[str, str], keys: Sequence[str]) -> str:
    """The papers' table: methods as rows, pairs as columns; each cell ours (mean ± std over seeds) and the
    published figure beside it (CRD's or DKD's paper, marked). A method with a stage that does not train the
    whole student says its epochs in its row's name (student + stage 1). ``pairs``: pair name -> column heading."""
    head = ["method", *pairs.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key in keys:
        name = label(key)
        stages = {epochs_label(runs[0]) for (_, k), runs in cells.items() if k == key and runs}
        if any("+" in s for s in stages):
            name += f" (epochs: {', '.join(sorted(stages))})"
        row = [name]
        for pair in pairs:
            runs = cells.get((pair, key))
            ours = "n/a" if runs is None else "{:.2f} ± {:.2f}".format(*mean_std([100 * r.test_acc for r in runs]))
            paper = published(pair, key)
            row.append(ours + (f" ({paper[1]} {paper[0]:.2f})" if paper else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_grid_report(cells: dict[tuple[str, str], list[Run]], pairs: dict[str, str], keys: Sequence[str],
                      runs: Sequence[Run], out: Path, command: str, note: str = "") -> str:
    """The benchmark grid's markdown report (returned and written to ``out``)."""
    parts = report_header(runs, "The CIFAR-100 benchmark", command, note)
    parts += [
        "Test top-1 (%) of the best-`val/acc` checkpoint, mean ± std over seeds; in brackets the published "
        f"figure: CRD = {CRD_SOURCE}; DKD = {DKD_SOURCE}. The published figures come from the full 240-epoch "
        "schedule and are not measured here. n/a: the method does not apply to the pair (its pair block says why). "
        "Every student trains the same epochs as its baseline; a stage that does not train the whole student "
        "comes on top (the row says so). Where the datamodule validates on the test split (the CIFAR "
        "convention of the KD papers), this is the best-epoch test accuracy the papers report.", "",
        grid_table(cells, pairs, keys), "",
        *runs_sections(runs, name=str, column="run"),
    ]
    text = "\n".join(parts) + "\n"
    out.write_text(text)
    return text
