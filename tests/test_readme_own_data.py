"""The README's "Distill your own model" block, run as written on a small greyscale tree and a small RGB one
(scikit-learn's digits, shipped with the install, written as PNGs), offline: the "published" resnet18 weights
are a randomly initialised resnet18 in a temporary torch hub cache, so here the teacher learns from scratch.
The student the block trains must be useful: its test accuracy well above chance. Both trees run at once
(one torch thread each), so the two cases take about one case's wall time on two cores."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import ROOT

pytestmark = pytest.mark.slow

MODES = ("L", "RGB")
TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 10  # 200 training images (20 of them held out for validation), 100 test
FALSE_PASS = 1e-6  # the chance that a student guessing at random passes the accuracy check


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- own-data -->")[1].split("<!-- /own-data -->")[0]
    return re.search(r"```bash\n(.*?)```", block, flags=re.S).group(1)


BLOCK = readme_block()
EPOCHS = int(re.findall(r"--trainer.max_epochs (\d+)", BLOCK)[-1])  # the student's (the block's last)
STUDENT = yaml.safe_load(re.search(r"--model.init_args.student '(\{.*?\})'", BLOCK).group(1))


def digits_tree(root: Path, mode: str) -> None:
    """``root/{train,test}/<digit>/<i>.png``: the first images of each digit, 8x8. "L" keeps the grey levels;
    "RGB" draws each digit in a dark ink on a light paper of random colours, so colour says nothing of the class."""
    from sklearn.datasets import load_digits

    digits, rng = load_digits(), np.random.default_rng(0)
    for label in range(10):
        index = np.flatnonzero(digits.target == label)
        for split, chosen in (("train", index[:TRAIN_PER_CLASS]),
                              ("test", index[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS])):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in chosen:
                ink = digits.images[i] / 16.0  # sklearn's levels are 0..16
                if mode == "RGB":
                    dark, light = rng.uniform(0, 0.4, 3), rng.uniform(0.6, 1, 3)
                    ink = light * (1 - ink[..., None]) + dark * ink[..., None]
                Image.fromarray((255 * ink).round().astype(np.uint8), mode=mode).save(folder / f"{i}.png")


def start_block(tmp_path: Path, mode: str) -> subprocess.Popen:
    import torchvision

    digits_tree(tmp_path / "my_data", mode)
    new = tmp_path / "new_images"  # a folder of images to label: no class folders
    new.mkdir()
    for i, f in enumerate(sorted((tmp_path / "my_data/test").rglob("*.png"))[:8]):
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
    return subprocess.Popen(["bash", "-e", "-c", BLOCK], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def useful_accuracy(labels: list[str]) -> float:
    """The accuracy a student must beat: always answering the commonest test class (chance), plus the
    one-sided binomial margin that a random guesser at that rate exceeds with probability FALSE_PASS."""
    n = len(labels)
    chance = max(labels.count(c) for c in set(labels)) / n
    return chance + NormalDist().inv_cdf(1 - FALSE_PASS) * (chance * (1 - chance) / n) ** 0.5


def check_case(tmp_path: Path, mode: str, stdout: str, stderr: str) -> None:
    from lightning_kd.models import build_network

    classes = [str(d) for d in range(10)]
    rows = list(csv.DictReader(open(tmp_path / "runs/my/kd/predictions.csv", newline="")))
    files = sorted((tmp_path / "my_data/test").rglob("*.png"))
    assert [r["sample"] for r in rows] == [str(f.relative_to(tmp_path)) for f in files]  # every test image
    assert [r["label"] for r in rows] == [f.parent.name for f in files]  # with its class name
    assert all(sum(float(r[f"p_{c}"]) for c in classes) == pytest.approx(1, abs=1e-5) for r in rows)
    accuracy = np.mean([r["predicted"] == r["label"] for r in rows])
    printed = float(re.search(r"test done: test/acc ([0-9.]+)", stdout).group(1))
    assert printed == pytest.approx(accuracy, abs=1e-3)  # the library's test metric agrees with the file
    needed = useful_accuracy([r["label"] for r in rows])
    print(f"{mode}: the student's test accuracy {accuracy:.3f} on {len(rows)} images, needed > {needed:.3f}")
    assert accuracy > needed, (mode, accuracy)
    labelled = list(csv.DictReader(open(tmp_path / "runs/my/new/predictions.csv", newline="")))
    assert [r["sample"] for r in labelled] == [f"new_images/{i:02d}.png" for i in range(8)]
    assert {r["label"] for r in labelled} == {""} and {r["predicted"] for r in labelled} <= set(classes)
    val = [r for r in csv.DictReader(open(tmp_path / "runs/my/kd/metrics.csv")) if r["metric"] == "val/acc"]
    assert len(val) == EPOCHS  # every epoch validated on the share of train held out
    student = build_network(STUDENT, num_classes=10, in_channels=len(mode))
    student.load_state_dict(torch.load(tmp_path / "my_student.pt", weights_only=True))  # strict: the exported student
    card = json.loads((tmp_path / "my_student.json").read_text())
    assert card["classes"] == classes and card["channels"] == len(mode)
    assert (tmp_path / "my_student.torchscript.pt").is_file() and (tmp_path / "my_student.onnx").is_file()
    teacher = torch.load(tmp_path / "runs/my/teacher/best.ckpt", weights_only=True)["state_dict"]
    assert teacher["student.fc.weight"].shape == (10, 512)  # the published backbone got a head for the 10 classes
    assert "predict done: 8 predictions" in stdout
    said = (stdout + stderr).count("torchvision.models.resnet18 takes 3-channel input")
    assert (said > 0) == (mode == "L")  # greyscale: replicated and said (once per process: tests/test_models.py)


def test_the_readme_own_data_block_trains_a_useful_student_on_greyscale_and_rgb(tmp_path):
    runs = {mode: start_block(tmp_path / mode, mode) for mode in MODES if not (tmp_path / mode).mkdir()}
    try:
        outputs = {mode: run.communicate(timeout=1800) for mode, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
                run.communicate()
    for mode, run in runs.items():
        assert run.returncode == 0, (mode, outputs[mode][1][-3000:])
    for mode in MODES:
        check_case(tmp_path / mode, mode, *outputs[mode])


def test_the_margin_is_the_binomial_one():
    # 10 balanced classes, 100 images: chance 0.1, sd sqrt(0.1 * 0.9 / 100) = 0.03, z(1 - 1e-6) = 4.753
    assert useful_accuracy([str(i % 10) for i in range(100)]) == pytest.approx(0.1 + 4.753 * 0.03, abs=1e-3)
    # an unbalanced split: chance is the commonest class's share, 0.5 of 40
    assert useful_accuracy(["a"] * 20 + ["b"] * 10 + ["c"] * 10) == pytest.approx(0.5 + 4.753 * 0.0791, abs=1e-3)
