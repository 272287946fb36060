"""The README's first command: one line per run, then a table whose numbers are the runs' own."""
from __future__ import annotations

import re
import statistics

import torch

from lightning_kd.cli import make_cli
from lightning_kd.tools import quickstart
from lightning_kd.tools.runner import resolve


def test_quickstart_prints_one_line_per_run_and_the_table_of_its_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        rows = quickstart.main(["--max_epochs", "2"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if re.match(r"(teacher|student baseline|student KD) +seed \d: ", l)]
    assert len(lines) == 1 + 2 * len(quickstart.SEEDS)
    tests = [float(re.search(r"test ([\d.]+)%", l).group(1)) for l in lines]
    assert tests == [round(100 * a, 2) for accs in rows.values() for a in accs]
    for name, accs in rows.items():
        shown = f"{100 * statistics.mean(accs):.2f}%"
        assert re.search(rf"\| {name} +\| {len(accs)} +\| +{re.escape(shown)}", out)
    gain = 100 * (statistics.mean(rows["student KD"]) - statistics.mean(rows["student baseline"]))
    assert f"KD - baseline: {gain:+.2f} points" in out
    assert len(list((tmp_path / "runs/wandb").glob("offline-run-*"))) == len(lines)  # one wandb run per model
    # The teacher lies where the shipped KD config reads it: `lightning-kd fit -c configs/quickstart/kd.yaml` runs.
    teacher_ckpt = resolve("configs/quickstart/kd.yaml")["model"]["init_args"]["teacher_ckpt"]
    assert (tmp_path / teacher_ckpt).is_file()
    cli = make_cli(["fit", "-c", "configs/quickstart/kd.yaml", "--trainer.max_epochs=1", "--trainer.logger=false",
                    "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--summary=false",
                    "--trainer.enable_progress_bar=false"])
    assert cli.model.hparams.teacher_ckpt == teacher_ckpt and cli.trainer.current_epoch == 1
