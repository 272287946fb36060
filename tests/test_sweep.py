"""The sweep tool: settings parse into overrides, and the score it reports is the best checkpoint's
validation accuracy, recomputed here from the saved weights; the test split is never evaluated."""
from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch

from helpers import ROOT
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.methods import Supervised
import lightning_kd.tools.sweep as sweep
from lightning_kd.tools.sweep import main as sweep_main, parse_set, setting_args, setting_name


def test_settings_become_overrides():
    pairs = parse_set("model.init_args.inheritance_weight,model.init_args.exploration_weight=1,10")
    assert [value for _, value in pairs] == ["1", "10"]
    assert setting_args((pairs[1],)) == ["--model.init_args.inheritance_weight=10",
                                         "--model.init_args.exploration_weight=10"]
    assert setting_name((pairs[1], ("trainer.max_epochs", "3"))) == "inheritance_weight=10 max_epochs=3"
    for bad in ("at_weight", "=1", "a="):
        with pytest.raises(Exception, match="KEY=V1,V2"):
            parse_set(bad)


def test_reports_the_best_validation_accuracy_and_never_tests(tmp_path, monkeypatch):
    def no_test(*args, **kwargs):
        raise AssertionError("the sweep evaluated the test split")

    monkeypatch.setattr(pl.Trainer, "test", no_test)
    runs = sweep_main(["-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--set", "trainer.max_epochs=1,2",
                       "--seeds", "0", "--run-dir", str(tmp_path), "--override=--trainer.limit_train_batches=3"])
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["setting"], r["seed"]) for r in rows] == [("max_epochs=1", "0"), ("max_epochs=2", "0")]

    data = DigitsDataModule()
    data.setup("fit")
    for run in runs:
        ckpt = tmp_path / run["setting"] / "seed0" / "best.ckpt"
        model = Supervised.load_from_checkpoint(ckpt, map_location="cpu").eval()
        correct = total = 0
        with torch.no_grad():
            for batch in data.val_dataloader():
                x, y = data.on_after_batch_transfer(batch, 0)[:2]
                correct += (model.student(x).argmax(1) == y).sum().item()
                total += len(y)
        assert total == 180
        assert run["val_acc"] == pytest.approx(correct / total, abs=1e-6)


def test_every_value_is_checked_before_the_first_run_trains(tmp_path, monkeypatch, capsys):
    fits = []
    monkeypatch.setattr(pl.Trainer, "fit", lambda *args, **kwargs: fits.append(args))
    with pytest.raises(SystemExit, match=r"the setting 'max_epochs=zz' cannot run .*nothing was trained"):
        sweep_main(["-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--set", "trainer.max_epochs=1,zz",
                    "--seeds", "0", "--run-dir", str(tmp_path)])
    assert fits == [] and not (tmp_path / "sweep.csv").exists()


def test_a_failed_run_leaves_the_summary_of_the_finished_ones(tmp_path, monkeypatch, capsys):
    def fails_at_two_epochs(config, overrides):
        if "--trainer.max_epochs=2" in overrides:
            raise FloatingPointError("train/loss is nan")
        return {"--seed_everything=0": 0.5, "--seed_everything=1": 0.7}[overrides[1]]

    monkeypatch.setattr(sweep, "best_val_acc", fails_at_two_epochs)
    with pytest.raises(SystemExit, match=r"2 run\(s\) failed \(max_epochs=2 seed 0, max_epochs=2 seed 1\)"):
        sweep_main(["-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--set", "trainer.max_epochs=1,2",
                    "--seeds", "0", "1", "--run-dir", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [(r["setting"], r["seed"], r["val_acc"], r["error"]) for r in rows] == [
        ("max_epochs=1", "0", "0.5", ""), ("max_epochs=1", "1", "0.7", ""),
        ("max_epochs=2", "0", "nan", "FloatingPointError: train/loss is nan"),
        ("max_epochs=2", "1", "nan", "FloatingPointError: train/loss is nan")]
    printed = capsys.readouterr().out
    assert "max_epochs=1" in printed and " 60.00 +- 14.14" in printed  # mean and sample std of 50 and 70
