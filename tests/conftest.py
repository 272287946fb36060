"""Fixtures shared by the tests (the helpers they share live in tests/helpers). Everything runs on CPU;
wandb never touches the network."""
from __future__ import annotations

import logging
import os
import sys

import pytest
import torch

from helpers import TINY_CNN, save_teacher
from lightning_kd.processes import kill, still_running

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Under pytest-xdist each test process takes its share of the cores (2 processes with 2 threads each on 2 cores
# stall each other); the processes a test starts inherit it. The suite then keeps that thread count: the CLI picks
# none when OMP_NUM_THREADS is set (tests/test_threads.py checks the picking itself). A count the user set is kept.
if "OMP_NUM_THREADS" not in os.environ:
    test_processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, torch.get_num_threads() // test_processes))
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


@pytest.fixture(autouse=True)
def lightning_logs_reach_caplog(monkeypatch):
    """Lightning stops its loggers' propagation when the root logger had no handler at their import,
    which depends on the import order; caplog reads the root logger, so let Lightning's INFO messages
    (stage switches, resume notes) through."""
    for name in ("pytorch_lightning", "lightning_fabric"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The default decode cache of ImageFolderDataModule ($XDG_CACHE_HOME/lightning_kd) inside the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def digits_teacher(tmp_path) -> str:
    """A state_dict file of a SmallCNN(width=16) teacher for the digits data."""
    return save_teacher(tmp_path / "teacher.pt", {"name": "small_cnn", "width": 16})


@pytest.fixture
def tiny_teacher(tmp_path) -> str:
    """A state_dict file of a small_cnn width 4 teacher for the digits data (see helpers.build_method)."""
    return save_teacher(tmp_path / "tiny_teacher.pt", TINY_CNN, seed=1)


@pytest.fixture(scope="module")
def single_thread():
    """Batch-2 inputs are too small to profit from threads; one thread avoids contention stalls."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


# ----------------------------------------------------------------------------- no process outlives the suite
# Every process the suite starts inherits this variable, also one whose parent has ended (reparented to init).
SUITE_VARIABLE = "LIGHTNING_KD_TEST_SUITE"
os.environ[SUITE_VARIABLE] = str(os.getpid())


def leftover_processes(grace_s: float = 30.0) -> dict[int, str]:
    """The suite's processes still running after ``grace_s`` seconds (those ending, e.g. a DataLoader worker
    after its loader, get that long); wandb's service is shut down first, as at the interpreter's exit."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    return still_running(SUITE_VARIABLE, str(os.getpid()), grace_s)  # multiprocessing's helpers end with it


def pytest_sessionfinish(session, exitstatus):
    """The suite fails when a process it started is still running at its end (a leak: it would outlive it)."""
    left = leftover_processes()
    if left:
        kill(left)
        lines = "\n".join(f"  {pid}: {line[:200]}" for pid, line in left.items())
        session.config.get_terminal_writer().line(
            f"\nERROR: {len(left)} process(es) started by the tests still ran at the end (killed now):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
