"""RunReport through the CLI: metrics.csv beside the checkpoints, the summaries, predict's predictions.csv."""
from __future__ import annotations

import csv

import torch

from helpers import ROOT
from lightning_kd.cli import make_cli

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
BASELINE = str(ROOT / "configs/quickstart/baseline.yaml")


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fit(folder, *extra):
    return make_cli(["fit", "-c", BASELINE, *QUIET, f"--checkpoint.dirpath={folder}", *extra])


def test_fit_writes_every_epochs_metrics_and_prints_a_summary(tmp_path, capsys):
    cli = fit(tmp_path / "run", "--trainer.max_epochs=3")
    table = rows(tmp_path / "run/metrics.csv")
    val = [float(r["value"]) for r in table if r["metric"] == "val/acc"]
    assert [int(r["epoch"]) for r in table if r["metric"] == "val/acc"] == [0, 1, 2]
    assert val[-1] == float(cli.trainer.callback_metrics["val/acc"])
    best = cli.trainer.checkpoint_callback
    assert max(val) == float(best.best_model_score)  # best.ckpt is the epoch of the highest val/acc in the file
    out = capsys.readouterr().out
    assert "fit done: 3 epoch(s), 57 step(s)" in out and f"best val/acc {max(val):.4g}: {best.best_model_path}" in out


def test_a_resumed_fit_appends_and_a_fresh_one_starts_over(tmp_path):
    fit(tmp_path / "run", "--trainer.max_epochs=2", "--trainer.max_steps=19")  # epoch 0 only
    fit(tmp_path / "run", "--trainer.max_epochs=2", f"--ckpt_path={tmp_path / 'run/last.ckpt'}")
    epochs = [int(r["epoch"]) for r in rows(tmp_path / "run/metrics.csv") if r["metric"] == "val/acc"]
    assert epochs == [0, 1]
    fit(tmp_path / "run", "--trainer.max_epochs=1", "--overwrite=true")
    assert [int(r["epoch"]) for r in rows(tmp_path / "run/metrics.csv") if r["metric"] == "val/acc"] == [0]


def test_predict_writes_probabilities_whose_accuracy_is_the_test_accuracy(tmp_path, capsys):
    fit(tmp_path / "run", "--trainer.max_epochs=2")
    best = tmp_path / "run/best.ckpt"
    tested = make_cli(["test", "-c", BASELINE, *QUIET, f"--checkpoint.dirpath={tmp_path / 'run'}", f"--ckpt_path={best}"])
    make_cli(["predict", "-c", BASELINE, *QUIET, f"--checkpoint.dirpath={tmp_path / 'run'}", f"--ckpt_path={best}"])
    path = tmp_path / "run/predictions.csv"
    assert f"predict done: 360 predictions (class and probabilities) written to {path}" in capsys.readouterr().out
    table = rows(path)
    probs = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in table])
    labels = torch.tensor([int(r["label"]) for r in table])
    predicted = torch.tensor([int(r["predicted"]) for r in table])
    torch.testing.assert_close(probs.sum(1), torch.ones(len(table)), atol=1e-4, rtol=0)
    assert torch.equal(predicted, probs.argmax(1))
    assert torch.equal(labels, tested.datamodule.splits["test"][1])
    accuracy = (predicted == labels).float().mean().item()
    assert abs(accuracy - float(tested.trainer.callback_metrics["test/acc"])) < 1e-6
    test_rows = [r for r in rows(tmp_path / "run/metrics.csv") if r["stage"] == "test"]
    assert {r["metric"] for r in test_rows} == {"test/acc", "test/acc5"}
