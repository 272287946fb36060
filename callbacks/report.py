"""RunReport: what a shell user reads after a run. Metrics go to ``metrics.csv`` beside the
checkpoints, a summary is printed at the end of ``fit`` and ``test``, and ``predict`` writes every
sample's name (its file), label and predicted class names and probabilities (``p_<class>``) to
``predictions.csv`` there, naming the file."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

METRICS_FILE, PREDICTIONS_FILE = "metrics.csv", "predictions.csv"


def run_folder(trainer: pl.Trainer) -> Optional[Path]:
    """The checkpoint folder of the run (where its files go), or None without checkpointing."""
    folders = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    return Path(folders[0]) if folders else None


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if not torch.is_tensor(v) or v.numel() == 1}


class RunReport(Callback):
    """``metrics.csv`` in long form (``stage, epoch, step, metric, value``): a row per logged scalar after
    every validation epoch and after a test. A fresh fit starts the file over, a resumed one appends.
    Without a checkpoint folder (no ModelCheckpoint) no file is written; predictions then go to
    ``trainer.default_root_dir``.

    Args:
        print_summary: print the summary lines at the end of fit and test (the tools print their own).
    """

    def __init__(self, print_summary: bool = True):
        self.print_summary = print_summary
        self.start_over = False  # a fresh fit replaces the file at its first write (after the folder checks)
        self.predictions: list[tuple[torch.Tensor, torch.Tensor]] = []

    def write(self, trainer: pl.Trainer, stage: str, metrics: dict[str, float]) -> None:
        folder = run_folder(trainer)
        if folder is None or not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / METRICS_FILE
        if self.start_over:
            path.unlink(missing_ok=True)
            self.start_over = False
        new = not path.exists()
        with path.open("a", newline="") as f:
            out = csv.writer(f)
            if new:
                out.writerow(["stage", "epoch", "step", "metric", "value"])
            out.writerows([stage, trainer.current_epoch, trainer.global_step, k, v] for k, v in metrics.items())

    def say(self, trainer: pl.Trainer, text: str) -> None:
        if self.print_summary and trainer.is_global_zero:
            print(text, flush=True)

    # ------------------------------------------------------------------ fit
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_over = trainer.ckpt_path is None  # a resumed fit appends to its run's file

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.write(trainer, "fit", scalars(trainer.callback_metrics))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = ", ".join(f"{k} {v:.4g}" for k, v in scalars(trainer.callback_metrics).items())
        lines = [f"fit done: {trainer.current_epoch} epoch(s), {trainer.global_step} step(s); last: {final}"]
        best = trainer.checkpoint_callback
        if isinstance(best, ModelCheckpoint) and best.best_model_path:
            lines.append(f"best {best.monitor} {float(best.best_model_score):.4g}: {best.best_model_path}")
        folder = run_folder(trainer)
        if folder is not None and (folder / METRICS_FILE).exists():
            lines.append(f"metrics per epoch: {folder / METRICS_FILE}")
        self.say(trainer, "\n".join(lines))

    # ------------------------------------------------------------------ test
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: v for k, v in scalars(trainer.callback_metrics).items() if k.startswith("test/")}
        self.write(trainer, "test", metrics)
        self.say(trainer, "test done: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    # ------------------------------------------------------------------ predict
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.predictions = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else torch.full((len(outputs),), -1)
        self.predictions.append((outputs.detach().float().cpu(), labels.cpu()))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = run_folder(trainer) or Path(trainer.default_root_dir)
        if not self.predictions or not trainer.is_global_zero:
            return
        probs = torch.cat([p for p, _ in self.predictions])
        labels = torch.cat([y for _, y in self.predictions])
        classes, names = predicted_names(trainer.datamodule, len(probs), probs.shape[1])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PREDICTIONS_FILE
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["sample", "label", "predicted", *(f"p_{c}" for c in classes)])
            rows = zip(names, probs.tolist(), labels.tolist(), probs.argmax(1).tolist())
            out.writerows([name, classes[y] if y >= 0 else "", classes[predicted], *(f"{v:.6g}" for v in p)]
                          for name, p, y, predicted in rows)
        print(f"predict done: {len(probs)} predictions (class and probabilities) written to {path}", flush=True)


def predicted_names(data, samples: int, num_classes: int) -> tuple[list[str], list]:
    """(class names, sample names) of a predict run: the datamodule's ``classes`` and ``predict_names()``
    (e.g. image files) where it has them and they fit, else the class indices and the sample numbers."""
    classes = [str(c) for c in getattr(data, "classes", None) or []]
    if len(classes) != num_classes:
        classes = [str(c) for c in range(num_classes)]
    names = data.predict_names() if hasattr(data, "predict_names") else None
    return classes, list(names) if names is not None and len(names) == samples else list(range(samples))
