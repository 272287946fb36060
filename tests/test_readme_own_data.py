"""The README's "Distill your own model" block, run as written on a tiny image tree, offline (the
published resnet18 weights are a file in a temporary torch hub cache)."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT

pytestmark = pytest.mark.slow


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-data -->")[1].split("<!-- /own-data -->")[0]
    return re.search(r"```bash\n(.*?)```", block, flags=re.S).group(1)


def tiny_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        for name, level in (("cats", 60), ("dogs", 190)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_the_readme_own_data_block_runs_as_written(tmp_path):
    import torchvision

    tiny_tree(tmp_path / "my_data")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    published = torchvision.models.resnet18().state_dict()
    torch.save(published, hub / Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name)
    # The block's `lightning-kd` and `python` are this interpreter (and its environment).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("lightning-kd", f"{sys.executable} -m lightning_kd"), ("python", sys.executable)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-e", "-c", readme_block()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    with open(tmp_path / "runs/my/kd/predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["label"] for r in rows} == {"0", "1"}  # every test image, both classes
    val = [r for r in csv.DictReader(open(tmp_path / "runs/my/kd/metrics.csv")) if r["metric"] == "val/acc"]
    assert len(val) == 10  # ten epochs, validated on the share of train held out
    student = torchvision.models.mobilenet_v3_small(num_classes=2)
    student.load_state_dict(torch.load(tmp_path / "my_student.pt", weights_only=True))  # strict: the exported student
    teacher = torch.load(tmp_path / "runs/my/teacher/best.ckpt", weights_only=True)["state_dict"]
    assert teacher["student.fc.weight"].shape == (2, 512)  # the published backbone got a head for the 2 classes
    assert "test done: test/acc" in done.stdout and "predict done: 8 predictions" in done.stdout
