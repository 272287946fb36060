"""Beyond one machine: a fit over two "nodes" of one gloo process each, started as on two machines with
torchrun (``--nnodes 2 --node_rank 0/1``), here both on localhost. The two nodes split every epoch's data
(the step count of one process on half the data) and write one run."""
from __future__ import annotations

import math
import socket
import subprocess
import sys

import pytest
import torch

from lightning_kd.datamodules import DigitsDataModule
from helpers import ROOT

PER_CLASS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_fit_over_two_nodes_started_by_torchrun_splits_the_data_and_writes_one_run(tmp_path):
    port, out = free_port(), tmp_path / "run"
    fit = ["-m", "lightning_kd", "fit", "-c", str(ROOT / "configs/quickstart/baseline.yaml"), "--trainer.num_nodes=2",
           "--trainer.devices=1", "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.max_epochs=2",
           "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--checkpoint.dirpath={out}",
           f"--data.init_args.train_per_class={PER_CLASS}", "--threads=1"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *fit],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=400)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    data = DigitsDataModule(train_per_class=PER_CLASS)
    data.setup("fit")
    loader = data.train_dataloader()
    per_node = math.ceil(len(loader.dataset) / 2)  # DistributedSampler: half the data each
    steps = per_node // data.batch_size if loader.drop_last else math.ceil(per_node / data.batch_size)
    assert steps != (len(loader.dataset) // data.batch_size if loader.drop_last else len(loader))  # one process differs
    checkpoint = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 * steps
    assert "GLOBAL_RANK: 0" in outputs[0] and "GLOBAL_RANK: 1" in outputs[1]  # Lightning saw the two nodes
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "last.ckpt", "metrics.csv"]
