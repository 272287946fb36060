"""The README's "Distill your own model" block, run as written on a tiny RGB tree and a tiny greyscale one
(MNIST-like PNGs into torchvision's 3-channel networks), offline (the published resnet18 weights are a file
in a temporary torch hub cache)."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from helpers.trees import image_tree

pytestmark = pytest.mark.slow


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-data -->")[1].split("<!-- /own-data -->")[0]
    return re.search(r"```bash\n(.*?)```", block, flags=re.S).group(1)


EPOCHS = int(re.findall(r"--trainer.max_epochs (\d+)", readme_block())[-1])  # the student's (the block's last)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_readme_own_data_block_runs_as_written(tmp_path, mode):
    import torchvision

    image_tree(tmp_path / "my_data", mode=mode)
    new = tmp_path / "new_images"  # a folder of images to label: no class folders
    new.mkdir()
    for i, f in enumerate(sorted((tmp_path / "my_data/test").rglob("*.png"))):
        (new / f"{i:02d}.png").write_bytes(f.read_bytes())
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
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = list(csv.DictReader(open(tmp_path / "runs/my/kd/predictions.csv", newline="")))
    files = sorted((tmp_path / "my_data/test").rglob("*.png"))
    assert [r["sample"] for r in rows] == [str(f.relative_to(tmp_path)) for f in files]  # every test image
    assert [r["label"] for r in rows] == [f.parent.name for f in files]  # with its class name
    assert all(float(r["p_cats"]) + float(r["p_dogs"]) == pytest.approx(1, abs=1e-5) for r in rows)
    labelled = list(csv.DictReader(open(tmp_path / "runs/my/new/predictions.csv", newline="")))
    assert [r["sample"] for r in labelled] == [f"new_images/{i:02d}.png" for i in range(8)]
    assert {r["label"] for r in labelled} == {""} and {r["predicted"] for r in labelled} <= {"cats", "dogs"}
    val = [r for r in csv.DictReader(open(tmp_path / "runs/my/kd/metrics.csv")) if r["metric"] == "val/acc"]
    assert len(val) == EPOCHS  # every epoch validated on the share of train held out
    student = torchvision.models.mobilenet_v3_small(num_classes=2)
    student.load_state_dict(torch.load(tmp_path / "my_student.pt", weights_only=True))  # strict: the exported student
    card = json.loads((tmp_path / "my_student.json").read_text())
    assert card["classes"] == ["cats", "dogs"] and card["channels"] == len(mode)
    assert (tmp_path / "my_student.torchscript.pt").is_file() and (tmp_path / "my_student.onnx").is_file()
    teacher = torch.load(tmp_path / "runs/my/teacher/best.ckpt", weights_only=True)["state_dict"]
    assert teacher["student.fc.weight"].shape == (2, 512)  # the published backbone got a head for the 2 classes
    assert "test done: test/acc" in done.stdout and "predict done: 8 predictions" in done.stdout
    said = (done.stdout + done.stderr).count("torchvision.models.resnet18 takes 3-channel input")
    assert (said > 0) == (mode == "L")  # greyscale: replicated and said (once per process: tests/test_models.py)
