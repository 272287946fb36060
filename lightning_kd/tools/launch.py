"""Where the tools' runs execute (results, sweep): processes on this machine (``--jobs N``, the node's GPUs
dealt out among them), or jobs of a cluster through submitit: SLURM jobs, the runs that can start together
as one job array, spread by SLURM over its nodes (``--launcher slurm``), or submitit's local backend, the
same jobs as processes of this machine (``--launcher local``)."""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch

from lightning_kd.threads import available_cores

LAUNCHERS = ("processes", "slurm", "local")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once: processes on this machine (each given the next GPU in turn, and the "
                             "cores divided by N), or the most array tasks SLURM runs at once")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="processes",
                        help="processes: --jobs processes here; slurm: every run a SLURM job through submitit "
                             "(pip install -e '.[launch]'), job arrays over the cluster's nodes; local: submitit's "
                             "local backend (the same jobs as processes here)")
    parser.add_argument("--slurm-partition", default=None, help="SLURM partition of the jobs")
    parser.add_argument("--slurm-gpus", type=int, default=1, help="GPUs of each run's job (0: a CPU job)")
    parser.add_argument("--slurm-cpus", type=int, default=8, help="CPU cores of each run's job")
    parser.add_argument("--slurm-timeout-min", type=int, default=24 * 60, help="time limit of each job")
    parser.add_argument("--slurm-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="another sbatch option for every job, e.g. --slurm-arg account=myproject")
    parser.add_argument("--launch-dir", type=Path, default=None,
                        help="submitit's folder (job scripts, logs, pickled results); default: <run dir>/submitit")


def check_launch_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}.")
    if args.launcher != "processes" and importlib.util.find_spec("submitit") is None:
        parser.error(f"--launcher {args.launcher} needs submitit: pip install -e '.[launch]'.")
    bad = [kv for kv in args.slurm_arg if "=" not in kv]
    if bad:
        parser.error(f"--slurm-arg takes KEY=VALUE (an sbatch option without its dashes), got {bad}.")


def visible_gpus() -> list[str]:
    """This machine's GPUs, as CUDA_VISIBLE_DEVICES names them (all of them when it is unset)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_setup(jobs: int, gpus: list[str], counter) -> None:
    """A worker process's share of the machine, before it touches CUDA: the next GPU in turn (worker i gets
    ``gpus[i % len(gpus)]``) and the cores divided by the ``jobs`` runs at once (unless OMP_NUM_THREADS chose;
    each run's CLI keeps it)."""
    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    if not os.environ.get("OMP_NUM_THREADS"):
        os.environ["OMP_NUM_THREADS"] = str(max(1, available_cores() // jobs))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


class ProcessPool(ProcessPoolExecutor):
    """``jobs`` worker processes, spawned, not forked (each run initialises its own torch state and CUDA
    context), each set up by :func:`worker_setup`."""

    def __init__(self, jobs: int):
        context = multiprocessing.get_context("spawn")
        super().__init__(jobs, mp_context=context, initializer=worker_setup,
                         initargs=(jobs, visible_gpus(), context.Value("i", 0)))

    def batch(self):
        return nullcontext()


class SubmititPool:
    """The same ``submit(fn, *args).result()`` through submitit; what is submitted inside ``batch()`` goes
    to SLURM as one job array."""

    def __init__(self, args: argparse.Namespace, folder: Path):
        import submitit

        cluster = "slurm" if args.launcher == "slurm" else "local"
        self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        gpus = args.slurm_gpus if cluster == "slurm" else min(args.slurm_gpus, len(visible_gpus()))
        params = dict(timeout_min=args.slurm_timeout_min, gpus_per_node=gpus, tasks_per_node=1, nodes=1,
                      name="lightning_kd")
        if cluster == "slurm":
            params.update(cpus_per_task=args.slurm_cpus, slurm_array_parallelism=args.jobs,
                          slurm_additional_parameters=dict(kv.split("=", 1) for kv in args.slurm_arg))
            if args.slurm_partition:
                params["slurm_partition"] = args.slurm_partition
        self.executor.update_parameters(**params)

    def submit(self, fn, *args, **kwargs):
        return self.executor.submit(fn, *args, **kwargs)

    def batch(self):
        return self.executor.batch()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def pool(args: argparse.Namespace, run_dir: Path):
    """The executor of :func:`add_launch_arguments`' options; None: run one after another in this process."""
    if args.launcher != "processes":
        return SubmititPool(args, args.launch_dir or Path(run_dir) / "submitit")
    return ProcessPool(args.jobs) if args.jobs > 1 else None
