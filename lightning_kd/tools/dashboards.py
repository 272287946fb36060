"""wandb for the tools (``--wandb``): each run joins the group of the table, sweep or Born-Again chain it
belongs to (the CLI names it by method, pair and seed and tags it with its method), and the results and
sweep tables are logged as wandb Tables, in a run of their own in that group."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

GROUP_VARIABLE = "WANDB_RUN_GROUP"  # read by wandb.init, inherited by the processes of --jobs


@contextlib.contextmanager
def wandb_group(name: str, enabled: bool = True) -> Iterator[None]:
    """The wandb runs started inside, in this process or in the processes it starts, join group ``name``,
    unless the user set ``WANDB_RUN_GROUP`` (theirs is kept)."""
    if not enabled or os.environ.get(GROUP_VARIABLE):
        yield
        return
    os.environ[GROUP_VARIABLE] = name
    try:
        yield
    finally:
        os.environ.pop(GROUP_VARIABLE, None)


def log_table(group: str, key: str, columns: Sequence[str], rows: Sequence[Sequence], save_dir: str = "runs") -> None:
    """A wandb run named ``<group>: <key>`` in ``group`` holding one Table (offline unless ``WANDB_MODE`` says
    otherwise, under ``save_dir/wandb`` like the CLI's runs)."""
    import wandb

    run = wandb.init(project="lightning_kd", dir=str(Path(save_dir).absolute()), group=group, name=f"{group}: {key}",
                     job_type="table", mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new")
    run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
    run.finish()
