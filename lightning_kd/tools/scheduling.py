"""Scheduling of the commands' runs: one after another, or in several spawned processes at once (several
small runs share one GPU), the teacher's run before the runs that read it."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Sequence

import torch

from lightning_kd.threads import available_cores
from lightning_kd.tools.records import Run, run_one


def share_cores(jobs: int) -> None:
    """A worker's torch threads: the cores divided by the ``jobs`` runs at once (at least 1), unless
    OMP_NUM_THREADS chose; the CLI of each run keeps it (it reads OMP_NUM_THREADS)."""
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = str(max(1, available_cores() // jobs))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def process_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes, spawned, not forked: each run initialises its own torch state (and CUDA
    context)."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=share_cores,
                               initargs=(jobs,))


def in_order(fn: Callable, calls: Sequence[tuple], jobs: int) -> Iterator:
    """``fn(*call)`` of every call, yielded in the calls' order as each is ready; ``jobs > 1`` runs that many
    at once, in their own processes."""
    if jobs == 1:
        for call in calls:
            yield fn(*call)
        return
    with process_pool(jobs) as pool:
        futures = [pool.submit(fn, *call) for call in calls]
        for future in futures:
            yield future.result()


def run_all(teacher_job: tuple, students: list[tuple], jobs: int, rerun: bool) -> list[Run]:
    """The teacher's run, then the students' (``(key, config, seed, overrides, run folder, uses the
    teacher)``) in the given order. With ``jobs > 1`` they run in that many processes at once: the
    teacher beside the students that need none, the others as soon as the teacher has finished."""
    def student_args(job, teacher_finished: str):
        *args, uses_teacher = job
        return (*args, teacher_finished if uses_teacher else "", rerun)

    if jobs == 1:
        teacher = run_one(*teacher_job, rerun=rerun)
        return [teacher] + [run_one(*student_args(job, teacher.finished)) for job in students]
    with process_pool(jobs) as pool:
        teacher_future = pool.submit(run_one, *teacher_job, rerun=rerun)
        pending = {i: pool.submit(run_one, *student_args(job, ""))
                   for i, job in enumerate(students) if not job[-1]}
        teacher = teacher_future.result()
        pending.update({i: pool.submit(run_one, *student_args(job, teacher.finished))
                        for i, job in enumerate(students) if job[-1]})
        return [teacher] + [pending[i].result() for i in range(len(students))]
