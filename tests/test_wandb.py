"""The default logger writes a real offline wandb run directory with metrics and the full config."""
import csv
import json

import pytest
import wandb
import yaml

from lightning_kd.cli import make_cli
from lightning_kd.tools.dashboards import wandb_group
from lightning_kd.tools.results import main as results_main
from lightning_kd.tools.sweep import main as sweep_main
from helpers import ROOT
from helpers.wandb_runs import flushed, read_runs


def test_cli_default_logger_writes_offline_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = ROOT / "configs" / "quickstart" / "baseline.yaml"
    make_cli(["fit", "-c", str(config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
              "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
              "--trainer.log_every_n_steps=1"])
    flushed()  # finish() returns before the file is written: stop the service that writes it
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "expected exactly one offline run directory"
    run = runs[0]
    events = list(run.glob("run-*.wandb"))
    assert events, "no .wandb event file (what `wandb sync` uploads)"
    # offline wandb keeps history and config in this binary log; the keys appear in it verbatim
    log = events[0].read_bytes()
    for key in (b"val/acc", b"train/loss", b"num_classes"):
        assert key in log, key
    saved = yaml.safe_load((run / "files" / "lightning_config.yaml").read_text())
    assert saved["model"]["class_path"] == "lightning_kd.methods.Supervised"
    assert saved["data"]["class_path"] == "lightning_kd.datamodules.DigitsDataModule"
    assert saved["trainer"]["max_epochs"] == 1  # the resolved config, overrides included
    assert (tmp_path / "runs" / "quickstart" / "baseline" / "best.ckpt").is_file()
    assert (tmp_path / "runs" / "quickstart" / "baseline" / "last.ckpt").is_file()


# ----------------------------------------------------------------------------- dashboards (issue 29, item 6)
SHORT = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false",
         "--summary=false"]


def spec(network: dict) -> str:
    return f"{network['name']}(" + ", ".join(f"{k}={v}" for k, v in network.items() if k != "name") + ")"


def test_a_fit_is_named_by_method_pair_and_seed_tagged_and_summarised_at_its_best_epoch(tmp_path, monkeypatch,
                                                                                       tiny_teacher):
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "quickstart" / "kd.yaml"
    make_cli(["fit", "-c", str(config), *SHORT, "--seed_everything=3", "--checkpoint.dirpath=kd",
              "--model.init_args.teacher={name: small_cnn, width: 4}", f"--model.init_args.teacher_ckpt={tiny_teacher}"])
    (run,) = read_runs(tmp_path / "runs")
    student = yaml.safe_load(config.read_text())["model"]["init_args"]["student"]
    assert run["name"] == f"KD {spec(student)} <- small_cnn(width=4) seed3"
    assert run["tags"] == ["KD"]
    # The best epoch: the first epoch of the highest val/acc in metrics.csv, written by another callback.
    with open(tmp_path / "kd" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"] == "fit"]
    val = {int(r["epoch"]): float(r["value"]) for r in rows if r["metric"] == "val/acc"}
    best_epoch = max(val, key=lambda e: (val[e], -e))
    assert run["summary"]["best/epoch"] == best_epoch and run["summary"]["best/val/acc"] == pytest.approx(val[best_epoch])
    loss = {int(r["epoch"]): float(r["value"]) for r in rows if r["metric"] == "val/loss"}
    assert run["summary"]["best/val/loss"] == pytest.approx(loss[best_epoch])


def test_the_results_table_s_runs_share_a_group_and_its_table_is_a_wandb_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    runs = results_main(["--configs", "configs/quickstart", "--seeds", "0", "--epochs", "1", "--limit-train-batches",
                         "2", "--only", "kd", "--wandb", "--out", "R.md", "--run-dir", "table_runs"])
    dashboards = read_runs(tmp_path / "runs")
    assert {d["group"] for d in dashboards} == {"table R.md"}
    names = sorted(d["name"] for d in dashboards)
    assert names == sorted(["table R.md: results", "Supervised small_cnn(width=64) seed0",
                            "Supervised small_cnn(width=4) seed0", "KD small_cnn(width=4) <- small_cnn(width=64) seed0"])
    (table_run,) = [d for d in dashboards if d["name"].endswith(": results")]
    table = json.loads(table_run["tables"][0].read_text())
    means = {row[0]: row[3] for row in table["data"]}
    assert means == pytest.approx({"teacher": 100 * runs[0].test_acc, "student baseline": 100 * runs[1].test_acc,
                                   "KD": 100 * runs[2].test_acc})
    assert table["columns"][:4] == ["method", "config", "network", "top-1 mean"]


def test_a_sweep_s_runs_share_a_group_and_its_table_is_a_wandb_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    runs = sweep_main(["-c", "configs/quickstart/baseline.yaml", "--set", "trainer.max_epochs=1,2", "--seeds", "0",
                       "--wandb", "--override=--trainer.limit_train_batches=2"])
    dashboards = read_runs(tmp_path / "runs")
    group = "sweep baseline trainer.max_epochs"
    assert {d["group"] for d in dashboards} == {group} and len(dashboards) == 3
    (table_run,) = [d for d in dashboards if d["name"] == f"{group}: sweep"]
    table = json.loads(table_run["tables"][0].read_text())
    assert {row[0]: row[1] for row in table["data"]} == pytest.approx({r["setting"]: 100 * r["val_acc"] for r in runs})


def test_a_group_set_after_an_earlier_run_of_the_process_is_the_run_s_group(tmp_path, monkeypatch):
    """wandb reads its environment once per process: the tools' group (set after an earlier fit here, as a second
    results or sweep command from Python would) must still reach the run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    fit = ["fit", "-c", str(ROOT / "configs" / "quickstart" / "baseline.yaml"), *SHORT]
    make_cli([*fit, "--checkpoint.dirpath=first"])
    wandb.finish()  # as the tools finish each run (else the next fit's logger would join it)
    with wandb_group("the tools' group"):
        make_cli([*fit, "--checkpoint.dirpath=second"])
    groups = sorted(run["group"] for run in read_runs(tmp_path / "runs"))
    assert groups == ["", "the tools' group"]


@pytest.mark.parametrize("logger, written", [("CSVLogger", "metrics.csv"), ("TensorBoardLogger", "events.out.tfevents.*")])
def test_the_readme_s_other_loggers_write_their_files(tmp_path, monkeypatch, logger, written):
    monkeypatch.chdir(tmp_path)
    make_cli(["fit", "-c", str(ROOT / "configs/quickstart/baseline.yaml"), *SHORT, "--trainer.max_epochs=1",
              "--trainer.logger", logger, "--trainer.logger.init_args.save_dir", "runs"])
    (found,) = (tmp_path / "runs").glob(f"**/version_0/{written}")
    if logger == "CSVLogger":  # the epoch's val/acc, as the library's own metrics.csv has it
        with open(found) as f:
            logged = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
        with open(tmp_path / "runs" / "quickstart" / "baseline" / "metrics.csv") as f:
            ours = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "val/acc"]
        assert logged == pytest.approx(ours) and len(ours) == 1
    assert not (tmp_path / "runs" / "wandb").exists()
