"""OneRunPerFolder: a checkpoint folder holds the checkpoints of one run."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

ROUTE_FOLDER = "route"  # RouteRecorder's default, next to the checkpoints


def run_files(folder: Path) -> list[Path]:
    """The checkpoints (and a recorded route) a run left in ``folder``."""
    files = sorted(folder.glob("*.ckpt"))
    if (folder / ROUTE_FOLDER / "route.json").is_file():
        files.append(folder / ROUTE_FOLDER)
    return files


class OneRunPerFolder(Callback):
    """Refuses, before training, a fit whose checkpoint folder holds the checkpoints of another run, unless
    the fit resumes from a checkpoint in that folder: otherwise a second run would write ``best-v1.ckpt``
    beside the first run's ``best.ckpt`` (which students keep reading) and overwrite its RCO route, so a
    student could silently mix two teachers. The message names the fixes: resume (``--ckpt_path``), start
    over (``--overwrite`` of ``lightning-kd fit``, which deletes those files first) or another folder.
    Every method adds it through ``configure_callbacks``."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = Path(trainer.ckpt_path).resolve().parent if trainer.ckpt_path else None
        for callback in trainer.checkpoint_callbacks:
            folder = Path(callback.dirpath) if callback.dirpath else None
            if folder is None or not folder.is_dir() or folder.resolve() == resumed:
                continue
            found = run_files(folder)
            if found:
                raise FileExistsError(
                    f"the checkpoint folder {str(folder)!r} already holds another run's files "
                    f"({[p.name for p in found]}). One folder holds one run: resume that run with "
                    f"--ckpt_path {str(folder / 'last.ckpt')!r}, start over with --overwrite (deletes those "
                    f"files first), or write to another folder (--checkpoint.dirpath).")
