"""The default logger writes a real offline wandb run directory with metrics and the full config."""
import wandb
import yaml

from lightning_kd.cli import make_cli
from helpers import ROOT


def test_cli_default_logger_writes_offline_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = ROOT / "configs" / "quickstart" / "baseline.yaml"
    make_cli(["fit", "-c", str(config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
              "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
              "--trainer.log_every_n_steps=1"])
    wandb.finish()  # the run is closed when the process exits; close it now to read its summary
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
