"""On the CPU the CLI takes its share of the cores (torch's default, one thread per core, oversubscribes a
busy machine), says it once in the log, and leaves an explicit choice (--threads, OMP_NUM_THREADS) alone."""
from __future__ import annotations

import logging

import pytest
import torch

from lightning_kd import threads
from lightning_kd.cli import make_cli
from lightning_kd.tools import scheduling
from helpers import ROOT

FIT = ["fit", "-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--trainer.max_epochs=1",
       "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.logger=false",
       "--trainer.enable_progress_bar=false", "--summary=false"]


@pytest.fixture(autouse=True)
def keep_thread_count(monkeypatch):
    count = torch.get_num_threads()
    monkeypatch.setattr(threads, "_said", set())
    yield
    torch.set_num_threads(count)


@pytest.mark.parametrize("cores, processes, busy, expected", [
    (16, 1, 0.0, 16),  # an idle machine: every core
    (16, 1, 3.4, 4),  # 3 busy processes: 16 // (1 + 3)
    (2, 1, 1.0, 1),  # the busy 2-core CPU
    (8, 2, 1.6, 2),  # 2 DDP processes + 2 busy: 8 // 4
    (2, 1, 7.0, 1),  # never below 1
])
def test_fair_share_divides_the_cores_by_the_processes(cores, processes, busy, expected):
    assert threads.fair_share(cores, processes, busy) == expected


def test_the_cli_takes_its_share_of_a_busy_cpu_and_says_it_once(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.2, 0.0, 0.0))
    monkeypatch.setattr(threads.torch.cuda, "is_available", lambda: False)
    torch.set_num_threads(6)
    with caplog.at_level(logging.INFO):
        make_cli([*FIT, "--checkpoint.dirpath=a"])
        assert torch.get_num_threads() == 2  # 6 cores // (this run + 2 busy)
        make_cli([*FIT, "--checkpoint.dirpath=b"])
    said = [r.getMessage() for r in caplog.records if "torch thread" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("lightning_kd: 2 torch thread(s) per process on the CPU (6 cores")


@pytest.mark.parametrize("how", ["option", "env"])
def test_an_explicit_thread_count_is_kept(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (50.0, 0.0, 0.0))  # would say 1
    if how == "env":
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        make_cli(FIT)
    else:
        make_cli([*FIT, "--threads=3"])
    assert torch.get_num_threads() == 3


def test_a_thread_count_below_one_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        make_cli([*FIT, "--threads=0"])
    assert not (tmp_path / "runs").exists()


def test_the_tools_workers_share_the_cores_among_the_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(scheduling, "available_cores", lambda: 8)
    scheduling.share_cores(4)
    assert torch.get_num_threads() == 2 and scheduling.os.environ["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins
    scheduling.share_cores(2)
    assert torch.get_num_threads() == 1
