"""Where the tools' runs execute: --jobs processes dealt the node's GPUs in turn and a share of the cores, or
jobs through submitit (its local backend here, the SLURM job arrays' code path), giving the table of a
sequential run."""
from __future__ import annotations

import argparse
import multiprocessing

import pytest
import torch

from lightning_kd.tools import launch
from lightning_kd.tools.results import main as results_main
from lightning_kd.tools.sweep import main as sweep_main


@pytest.fixture
def keep_threads(monkeypatch):
    count = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    torch.set_num_threads(count)


def test_workers_take_the_node_s_gpus_in_turn_and_share_the_cores(keep_threads, monkeypatch):
    monkeypatch.setattr(launch, "available_cores", lambda: 8)
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    given = []
    for _ in range(3):  # three workers of a --jobs 4 pool on a node whose visible GPUs are 3 and 5
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        launch.worker_setup(4, ["3", "5"], counter)
        given.append(launch.os.environ["CUDA_VISIBLE_DEVICES"])
    assert given == ["3", "5", "3"] and torch.get_num_threads() == 2  # 8 cores // 4 jobs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins
    launch.worker_setup(2, [], counter)
    assert torch.get_num_threads() == 1


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")
    assert launch.visible_gpus() == ["2", "7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.visible_gpus() == []


@pytest.mark.parametrize("argv, message", [(["--jobs", "0"], "--jobs must be >= 1"),
                                           (["--slurm-arg", "account"], "--slurm-arg takes KEY=VALUE")])
def test_bad_launch_options_are_refused_naming_the_fix(argv, message, capsys):
    parser = argparse.ArgumentParser()
    launch.add_launch_arguments(parser)
    with pytest.raises(SystemExit):
        launch.check_launch_arguments(parser, parser.parse_args(argv))
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_results_table_through_submitit_jobs_equals_the_sequential_one(tmp_path):
    def table(name, *extra):
        return results_main(["--configs", "configs/quickstart", "--seeds", "0", "--epochs", "1", "--limit-train-batches",
                             "2", "--only", "kd", "--out", str(tmp_path / name / "R.md"), "--run-dir",
                             str(tmp_path / name), *extra])

    sequential, jobs = table("here"), table("jobs", "--launcher", "local", "--jobs", "2")
    assert [(r.key, r.test_acc, r.history) for r in jobs] == [(r.key, r.test_acc, r.history) for r in sequential]
    assert list((tmp_path / "jobs" / "submitit").glob("*_log.out"))  # they ran as submitit jobs
    assert jobs[2].teacher_finished == jobs[0].finished  # KD read the teacher that job trained


@pytest.mark.slow
def test_a_sweep_through_submitit_jobs_equals_the_sequential_one(tmp_path):
    def sweep(name, *extra):
        return sweep_main(["-c", "configs/quickstart/baseline.yaml", "--set", "trainer.max_epochs=1,2", "--seeds", "0",
                           "--run-dir", str(tmp_path / name), "--override=--trainer.limit_train_batches=2", *extra])

    sequential, jobs = sweep("here"), sweep("jobs", "--launcher", "local", "--jobs", "2")
    assert [r["val_acc"] for r in jobs] == [r["val_acc"] for r in sequential]
    assert list((tmp_path / "jobs" / "submitit").glob("*_log.out"))
