"""lightning_kd/compat.py against the installed Lightning: each function does what the library relies on, so a
Lightning release that moves the loop counters fails here (see tests/test_architecture.py)."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from helpers import RecordingLogger, trainer
from lightning_kd.compat import count_optimizer_step, epochs_begun, step_values_logged


class Manual(pl.LightningModule):
    """One real optimizer step per batch, and ``counted`` steps counted for another process."""

    def __init__(self, counted: int):
        super().__init__()
        self.automatic_optimization = False
        self.net, self.counted = torch.nn.Linear(2, 1), counted

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.net(batch[0]).square().mean())
        optimizer.step()
        for _ in range(self.counted):
            count_optimizer_step(self.trainer)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)


def test_count_optimizer_step_counts_like_a_step_of_the_module_and_changes_nothing_else(tmp_path):
    runs = {}
    for counted in (0, 2):
        torch.manual_seed(0)
        model = Manual(counted)
        fit = trainer(tmp_path, max_epochs=2, limit_train_batches=None)
        fit.fit(model)
        runs[counted] = (fit.global_step, [p.detach().clone() for p in model.parameters()])
    assert runs[0][0] == 8 and runs[2][0] == 8 * 3  # 4 batches x 2 epochs, each with 1 + counted steps
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[2][1]))  # the weights saw the same steps


class EpochRecordingLoader(DataLoader):
    """A training loader that records, when an epoch's iteration starts, what the trainer says of it."""

    seen: list = []

    def __iter__(self):
        self.seen.append((epochs_begun(self.trainer), self.trainer.current_epoch))
        return super().__iter__()


class Recording(Manual):
    def train_dataloader(self):
        loader = EpochRecordingLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
        loader.trainer = self.trainer
        return loader


def test_epochs_begun_is_the_next_epoch_when_a_resumed_fit_starts_iterating(tmp_path):
    """Normally the epoch being started; after a resume from an epoch-end checkpoint it already counts that
    epoch, while ``current_epoch`` does not yet: the order the streaming loader must take is the next one's."""
    EpochRecordingLoader.seen = []
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="end", save_on_train_epoch_end=True)
    trainer(tmp_path, max_epochs=2, limit_train_batches=None, enable_checkpointing=True,
            callbacks=[checkpoint]).fit(Recording(0))
    assert EpochRecordingLoader.seen == [(0, 0), (1, 1)]
    EpochRecordingLoader.seen = []
    trainer(tmp_path, max_epochs=3, limit_train_batches=None).fit(Recording(0), ckpt_path=tmp_path / "end.ckpt")
    assert EpochRecordingLoader.seen == [(2, 1)]  # current_epoch would replay epoch 1's order


class Asking(Manual):
    """Logs a value every batch and records, in the step, whether step_values_logged says it is logged."""

    def __init__(self):
        super().__init__(0)
        self.asked = []

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        self.asked.append((self.trainer.current_epoch, batch_idx, step_values_logged(self.trainer)))
        self.log("value", float(batch_idx), on_step=True, on_epoch=False)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(20, 2)), batch_size=2)  # 10 batches


def test_step_values_logged_covers_every_step_the_loggers_write_and_each_epochs_first_and_last(tmp_path):
    model, logger = Asking(), RecordingLogger()
    trainer(tmp_path, max_epochs=2, limit_train_batches=None, logger=logger, log_every_n_steps=3).fit(model)
    said = [(epoch, batch) for epoch, batch, logged in model.asked if logged]
    # Lightning writes the steps whose batch count since the start is a multiple of 3 (its `step` is that
    # count - 1): batches 2, 5, 8 of epoch 0 and 1, 4, 7 of epoch 1 (batches 12, 15, 18 of the fit)
    steps = [step for step, metrics in logger.rows if "value" in metrics]
    assert steps == [2, 5, 8, 11, 14, 17]
    written = {(step // 10, step % 10) for step in steps}
    assert set(said) == written | {(0, 0), (0, 9), (1, 0), (1, 9)}
