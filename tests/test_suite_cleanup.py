"""The suite's own check that no process it started outlives it (tests/conftest.py): it finds them all, also
one whose parent has ended (reparented to init), and only them."""
from __future__ import annotations

import os
import signal
import subprocess

import conftest
from lightning_kd.processes import ending_its_processes, marked_processes


def test_the_suite_finds_the_processes_it_started_also_orphans():
    # The shell starts `sleep` in the background and ends: the sleep's parent is gone, as a leaked worker's.
    pid = int(subprocess.run(["bash", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                             check=True).stdout)
    try:
        found = marked_processes(conftest.SUITE_VARIABLE, str(os.getpid()))
        assert found.get(pid) == "sleep 120"
        assert os.getpid() not in found and os.getppid() not in found  # itself and whoever started it are not
    finally:
        os.kill(pid, signal.SIGKILL)
    assert pid not in conftest.leftover_processes(grace_s=5)


def test_a_block_ends_the_processes_it_started_also_orphans():
    with ending_its_processes(grace_s=1):
        pid = int(subprocess.run(["bash", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], capture_output=True,
                                 text=True, check=True).stdout)
        assert pid in marked_processes(conftest.SUITE_VARIABLE, str(os.getpid()))
    assert pid not in marked_processes(conftest.SUITE_VARIABLE, str(os.getpid()))
