"""The CLI's checkpoints: best.ckpt follows val/acc, last.ckpt is always the latest epoch."""
import torch

from helpers import ROOT
from lightning_kd.cli import make_cli


def test_last_ckpt_is_the_latest_epoch_even_without_a_new_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # lr 0: val/acc never improves after epoch 0, so only epoch 0 is a "best" save. Lightning's
    # own save_last would then leave last.ckpt at epoch 0.
    make_cli(["fit", "-c", str(ROOT / "configs" / "quickstart" / "baseline.yaml"),
              "--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.logger=false", "--trainer.enable_progress_bar=false",
              "--model.init_args.optimizer.init_args.lr=0.0", f"--checkpoint.dirpath={tmp_path}"])
    best = torch.load(tmp_path / "best.ckpt", weights_only=False)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert best["epoch"] == 0
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
