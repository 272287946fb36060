"""One writer per checkpoint folder: a fit holds a lock on its folder that another fit, started at the same moment
or later, is refused by, and that a killed run does not leave behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint

from helpers import DIGITS_SHAPE, ROOT, TINY_CNN, trainer
from lightning_kd.callbacks.run_folder import lock_folder
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.methods import Supervised

HOLD_LOCK = ("import sys, time\nfrom lightning_kd.callbacks.run_folder import lock_folder\n"
             "lock_folder(__import__('pathlib').Path(sys.argv[1]))\nprint('locked', flush=True)\ntime.sleep(120)\n")


def fit_into(folder: Path) -> None:
    model = Supervised(student=TINY_CNN, input_shape=DIGITS_SHAPE)
    trainer(enable_checkpointing=True, callbacks=[ModelCheckpoint(folder, filename="last")]).fit(
        model, DigitsDataModule(batch_size=16))


def test_a_run_killed_while_it_holds_the_lock_does_not_leave_it_behind(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=rf"is being written by another run \(process {holder.pid}\)"):
            fit_into(folder)
        assert list(folder.iterdir()) == []  # refused before anything was written; no lock file either
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fit_into(folder)  # the kernel dropped the killed process's lock
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]


def test_a_finished_or_failed_fit_gives_its_lock_back(tmp_path):
    folder = tmp_path / "run"
    fit_into(folder)
    os.close(lock_folder(folder))  # free after the fit: a later run (a resume) may write here
    with pytest.raises(FileExistsError, match="already holds another run's files"):
        fit_into(folder)  # refused by the folder check, after taking the lock
    os.close(lock_folder(folder))  # given back by the failed fit too


@pytest.mark.slow
def test_two_fits_started_at_the_same_moment_into_one_folder_one_writes(tmp_path):
    folder = tmp_path / "run"
    command = [sys.executable, "-m", "lightning_kd", "fit", "-c", str(ROOT / "configs/quickstart/baseline.yaml"),
               "--trainer.logger=false", "--trainer.max_epochs=3", f"--checkpoint.dirpath={folder}", "--summary=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "is being written by another run" in refused or "already holds another run's files" in refused, refused
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # no best-v1.ckpt
