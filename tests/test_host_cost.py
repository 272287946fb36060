"""The host-cost benchmark counts right: a step with a known number of extra Python calls and ATen ops is counted
with exactly that many more (no timing assertions)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from helpers import ROOT, trainer
from lightning_kd.tools import host_cost

EXTRA = 7


def nothing() -> None:
    pass


class Tiny(pl.LightningModule):
    """A linear step; ``extra`` more calls of :func:`nothing` and ``extra`` more ``+ 1`` ops per step."""

    def __init__(self, extra: int):
        super().__init__()
        self.net, self.extra = torch.nn.Linear(3, 1), extra

    def training_step(self, batch, batch_idx):
        out = self.net(batch[0])
        for _ in range(self.extra):
            nothing()
            out = out + 1
        return out.square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(40, 3)), batch_size=2)  # 20 batches


def per_step(extra: int, what: str, tmp_path) -> float:
    meter = host_cost.StepCounter(start=3, steps=10, what=what)
    trainer(tmp_path, limit_train_batches=None, callbacks=[meter]).fit(Tiny(extra))
    return meter.value


def test_op_counter_counts_each_dispatched_op():
    a, b = torch.ones(2), torch.ones(2)
    with host_cost.OpCounter() as counter:
        (a + b).mul_(2).relu()
    assert counter.ops == 3


def test_a_step_with_known_extra_calls_and_ops_is_counted_with_exactly_those(tmp_path):
    for what in ("calls", "ops"):
        assert per_step(EXTRA, what, tmp_path) - per_step(0, what, tmp_path) == EXTRA, what
    assert per_step(0, "time", tmp_path) > 0


@pytest.mark.slow  # 14 fits through the CLI
def test_the_table_of_two_methods(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "BENCHMARKS.md"
    rows = host_cost.main(["--configs-dir", str(ROOT / "configs" / "quickstart"), "--configs", "kd", "dml",
                           "--steps", "2", "--rounds", "1", "--out", str(out)])
    assert [(r[0], r[1]) for r in rows] == [("dml.yaml", "DML"), ("kd.yaml", "KD")]
    for row in rows:
        number = [float(c.replace(",", "").rstrip("%")) for c in row[2:]]
        assert abs(number[2] - number[0] / number[1]) < 0.01  # the ratio is of the two counts
        assert number[3] < number[1]  # the bare module's own log of its loss costs calls
        assert abs(number[6] - 100 * (number[4] / number[5] - 1)) < 0.1
        assert all(v > 0 for v in number[:2] + number[3:6] + number[7:])
    assert out.read_text().count("<!-- bench:host-cost -->") == 1


def test_windows_in_one_fit_count_what_fits_of_their_own_count(tmp_path):
    """The benchmark counts calls and ops in consecutive windows of one fit (after a timed one): each window
    counts what a fit measuring only it counts, and the extra step's calls and ops show in both."""
    for extra in (0, EXTRA):
        meter = host_cost.StepCounter(start=3, steps=5, what=("time", "calls", "ops"))
        trainer(tmp_path, limit_train_batches=None, callbacks=[meter]).fit(Tiny(extra))
        assert meter.batches == 19 and meter.values["time"] > 0
        for what in ("calls", "ops"):
            alone = host_cost.StepCounter(start=3, steps=5, what=what)
            trainer(tmp_path, limit_train_batches=None, callbacks=[alone]).fit(Tiny(extra))
            assert meter.values[what] == alone.value, (extra, what)
