"""The README's Python example, run as written: a teacher and a KD student fitted by a plain Trainer, tested and
exported; the exported student alone gives the printed test accuracy."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from helpers import ROOT
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.models import small_cnn

pytestmark = pytest.mark.slow  # two 5-epoch fits


def readme_python() -> str:
    block = (ROOT / "README.md").read_text().split("<!-- python-example -->")[1].split("<!-- /python-example -->")[0]
    return re.search(r"```python\n(.*?)```", block, flags=re.S).group(1)


def test_the_readme_python_example_runs_and_its_export_gives_the_printed_accuracy(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-c", readme_python()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = float(re.search(r"student test/acc ([\d.]+)", done.stdout).group(1))

    data = DigitsDataModule()
    data.setup("test")
    x, y = data.splits["test"]
    student = small_cnn(num_classes=10, in_channels=1, width=4).eval()
    student.load_state_dict(torch.load(tmp_path / "student.pt", weights_only=True))
    with torch.no_grad():
        accuracy = (student((x.float() / 255 - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1))
                    .argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(printed, abs=1e-6)
    assert (tmp_path / "student.json").is_file() and (tmp_path / "student.torchscript.pt").is_file()
