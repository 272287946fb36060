"""Scheduling of the commands' runs: one after another in this process, or at once through an executor of
:mod:`lightning_kd.tools.launch` (processes of this machine, SLURM jobs), the teacher's run before the runs
that read it."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

from lightning_kd.tools.records import Run, run_one


def in_order(fn: Callable, calls: Sequence[tuple], executor=None) -> Iterator:
    """``fn(*call)`` of every call, yielded in the calls' order as each is ready; with an ``executor``
    (:func:`lightning_kd.tools.launch.pool`) all at once, as one job array on SLURM."""
    if executor is None:
        for call in calls:
            yield fn(*call)
        return
    with executor:
        with executor.batch():
            futures = [executor.submit(fn, *call) for call in calls]
        for future in futures:
            yield future.result()


def run_all(teacher_job: tuple, students: list[tuple], rerun: bool, executor: Optional[object] = None) -> list[Run]:
    """The teacher's run, then the students' (``(key, config, seed, overrides, run folder, uses the
    teacher)``) in the given order. With an ``executor`` they run at once: the teacher beside the students
    that need none, the others as soon as the teacher has finished."""
    def student_args(job, teacher_finished: str):
        *args, uses_teacher = job
        return (*args, teacher_finished if uses_teacher else "", rerun)

    if executor is None:
        teacher = run_one(*teacher_job, rerun=rerun)
        return [teacher] + [run_one(*student_args(job, teacher.finished)) for job in students]
    with executor:
        with executor.batch():
            teacher_future = executor.submit(run_one, *teacher_job, rerun=rerun)
            pending = {i: executor.submit(run_one, *student_args(job, ""))
                       for i, job in enumerate(students) if not job[-1]}
        teacher = teacher_future.result()
        with executor.batch():
            pending.update({i: executor.submit(run_one, *student_args(job, teacher.finished))
                            for i, job in enumerate(students) if job[-1]})
        return [teacher] + [pending[i].result() for i in range(len(students))]
