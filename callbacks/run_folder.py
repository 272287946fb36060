"""OneRunPerFolder: a checkpoint folder holds the checkpoints of one run, written by one process at a time."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

try:
    import fcntl
except ImportError:  # not POSIX: the folder check alone applies
    fcntl = None

ROUTE_FOLDER = "route"  # RouteRecorder's default, next to the checkpoints


def run_files(folder: Path) -> list[Path]:
    """The checkpoints (and a recorded route) a run left in ``folder``."""
    files = sorted(folder.glob("*.ckpt"))
    if (folder / ROUTE_FOLDER / "route.json").is_file():
        files.append(folder / ROUTE_FOLDER)
    return files


def start_over(folder: Path, inputs: list[Path]) -> None:
    """``--overwrite``: delete the run files of ``folder`` (:func:`run_files`), once the run is built (its config,
    data and teacher checked); refused, deleting nothing, when one of them is among the run's own ``inputs``
    (a teacher_ckpt, an ensemble member or a route read from that folder)."""
    doomed = [p.resolve() for p in run_files(folder)]
    inside = [str(p) for p in inputs if any(p.resolve() == d or d in p.resolve().parents for d in doomed)]
    if inside:
        raise ValueError(f"--overwrite would delete {inside[0]!r}, which this run reads as its teacher (or route), "
                         f"with the other files of {str(folder)!r}; nothing was deleted: give this run another "
                         f"checkpoint.dirpath, or move that file out of the folder first.")
    for path in doomed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def lock_holder(folder: Path) -> str:
    """Who holds the lock on ``folder``: the process that ``/proc/locks`` names (Linux), else "another process"."""
    inode = folder.stat().st_ino
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()  # 1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                return f"process {fields[4]}"
    except OSError:
        pass
    return "another process"


def lock_folder(folder: Path) -> Optional[int]:
    """An exclusive ``flock`` on the folder itself (no lock file): held while the returned descriptor is open,
    and dropped by the kernel when the process ends, so a killed run never leaves it behind. ``FileExistsError``
    when another process holds it; None where the filesystem has no flock (the folder check alone applies)."""
    if fcntl is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FileExistsError(
            f"the checkpoint folder {str(folder)!r} is being written by another run ({lock_holder(folder)}): one "
            f"folder holds one run. Wait for that run to end (then resume it with --ckpt_path or start over with "
            f"--overwrite), or write to another folder (--checkpoint.dirpath).") from None
    except OSError:  # e.g. a network filesystem without flock
        os.close(fd)
        return None
    return fd


class OneRunPerFolder(Callback):
    """Refuses, before training, a fit whose checkpoint folder holds the checkpoints of another run, unless
    the fit resumes from a checkpoint in that folder: otherwise a second run would write ``best-v1.ckpt``
    beside the first run's ``best.ckpt`` (which students keep reading) and overwrite its RCO route, so a
    student could silently mix two teachers. The message names the fixes: resume (``--ckpt_path``), start
    over (``--overwrite`` of ``lightning-kd fit``, which deletes those files first) or another folder.

    Runs started at the same moment see the same empty folder, so the fit also holds an exclusive lock on
    each of its checkpoint folders (:func:`lock_folder`, taken by the global rank zero before that check)
    until it ends: a second fit into a folder being written is refused, whether it resumes or not. Every
    method adds it through ``configure_callbacks``."""

    def __init__(self):
        self.locks: list[int] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folders = {Path(c.dirpath).resolve(): Path(c.dirpath) for c in trainer.checkpoint_callbacks if c.dirpath}
        refused = None
        if trainer.is_global_zero:
            try:
                self.locks = [fd for folder in folders.values() if (fd := lock_folder(folder)) is not None]
            except FileExistsError as err:
                self.release()
                refused = str(err)
        refused = trainer.strategy.broadcast(refused, src=0)  # every process stops, not rank zero alone
        if refused:
            raise FileExistsError(refused)
        resumed = Path(trainer.ckpt_path).resolve().parent if trainer.ckpt_path else None
        for resolved, folder in folders.items():
            if not folder.is_dir() or resolved == resumed:
                continue
            found = run_files(folder)
            if found:
                raise FileExistsError(
                    f"the checkpoint folder {str(folder)!r} already holds another run's files "
                    f"({[p.name for p in found]}). One folder holds one run: resume that run with "
                    f"--ckpt_path {str(folder / 'last.ckpt')!r}, start over with --overwrite (deletes those "
                    f"files first), or write to another folder (--checkpoint.dirpath).")

    def release(self) -> None:
        for fd in self.locks:  # unlocked explicitly: forked loader workers may still share the descriptor
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.locks = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.release()
