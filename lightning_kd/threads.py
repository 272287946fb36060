"""How many torch threads a run on the CPU uses. Torch's default, one per core, oversubscribes a machine
where other processes already run (the quickstart teacher took 924 s instead of 57 s on a busy 2-core CPU):
the CLI takes its share of the cores instead, says so once, and leaves an explicit choice alone."""
from __future__ import annotations

import os
from typing import Optional

import torch
from pytorch_lightning.utilities import rank_zero_info

_said: set[tuple] = set()  # what was said in this process (the tools run many fits in one)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM or container limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fair_share(cores: int, processes: int, busy: float) -> int:
    """The cores divided by the processes that run on them: this run's ``processes`` and the ``busy`` ones
    already running (the load average), at least 1."""
    return max(1, cores // (processes + round(busy)))


def choose_threads(threads: Optional[int], processes: int = 1) -> int:
    """Set torch's thread count for a CPU run and say it once: ``threads`` if given (``--threads``), else
    OMP_NUM_THREADS's if set, else the fair share of the cores given the 1-minute load average."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}; leave it out to take a fair share of the cores.")
        source = why = "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        threads, source = torch.get_num_threads(), "OMP_NUM_THREADS"
        why = source
    else:
        cores, busy = available_cores(), os.getloadavg()[0]
        threads, source = fair_share(cores, processes, busy), "load"
        why = (f"{cores} cores shared by {processes} process(es) of this run and a load average of {busy:.1f}; "
               f"--threads N or OMP_NUM_THREADS=N chooses")
    torch.set_num_threads(threads)
    if (threads, source) not in _said:
        _said.add((threads, source))
        rank_zero_info(f"lightning_kd: {threads} torch thread(s) per process on the CPU ({why})")
    return threads
