"""The exported student reproduces the library's test-split predictions without the library: its state_dict
with the JSON preprocessing in a plain torchvision network, the TorchScript file in plain torch and the ONNX
file in onnxruntime, run in a process that never imports lightning_kd."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import TINY_CNN, trainer
from helpers.trees import image_tree
from lightning_kd.datamodules import DigitsDataModule, ImageFolderDataModule
from lightning_kd.methods import KD, Supervised

# Runs in a fresh interpreter: reads the test images with PIL as the JSON says, and writes each exported
# form's probabilities. It refuses to run if anything imported lightning_kd.
OUTSIDE = r"""
import json, sys
from pathlib import Path
import numpy as np, onnxruntime, torch, torchvision
from PIL import Image

out, root = Path(sys.argv[1]), Path(sys.argv[2])
card = json.loads((out / "student.json").read_text())
size = card["image_size"]
files = sorted(f for c in card["classes"] for f in (root / "test" / c).iterdir())
images = np.stack([np.asarray(Image.open(f).convert("L" if card["channels"] == 1 else "RGB")
                              .resize((size, size), Image.BILINEAR), dtype=np.float32) / 255 for f in files])
x = torch.from_numpy(images).reshape(len(files), size, size, card["channels"]).permute(0, 3, 1, 2)
spec = card["network"]
name = spec["name"] if isinstance(spec, dict) else spec
net = getattr(torchvision.models, name.rpartition(".")[2])(num_classes=card["num_classes"]).eval()
net.load_state_dict(torch.load(out / card["files"]["state_dict"], weights_only=True))
mean, std = torch.tensor(card["mean"]).view(1, -1, 1, 1), torch.tensor(card["std"]).view(1, -1, 1, 1)
normalized = (x - mean) / std
normalized = normalized.expand(-1, card["network_channels"], -1, -1)
with torch.no_grad():
    forms = {"state_dict": net(normalized).softmax(1),
             "torchscript": torch.jit.load(str(out / card["files"]["torchscript"]))(x)}
session = onnxruntime.InferenceSession(str(out / card["files"]["onnx"]))
forms["onnx"] = torch.from_numpy(session.run(["probabilities"], {"images": x.numpy()})[0])
assert not any(name.startswith("lightning_kd") for name in sys.modules), "imported the library"
torch.save(forms, out / "outside.pt")
"""


@pytest.mark.parametrize("mode, network", [("L", "torchvision.models.resnet18"),
                                           ("RGB", "torchvision.models.mobilenet_v3_small")])
def test_every_exported_form_gives_the_library_predictions_outside_it(tmp_path, mode, network):
    image_tree(tmp_path / "data", mode=mode, side=20)
    data = ImageFolderDataModule(root=str(tmp_path / "data"), image_size=24, cache=False, batch_size=4)
    model = Supervised(student={"name": network, "weights": None}, num_classes=data.num_classes,
                       input_shape=data.input_shape)
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=1)
    fit.fit(model, data)  # trains a little and records the data's preprocessing
    fit.save_checkpoint(tmp_path / "student.ckpt")
    loaded = Supervised.load_from_checkpoint(tmp_path / "student.ckpt")  # the preprocessing travels in it
    files = loaded.export_student(str(tmp_path / "student.pt"))
    assert set(files) == {"state_dict", "preprocessing", "torchscript", "onnx"}
    card = json.loads((tmp_path / "student.json").read_text())
    assert card["classes"] == ["cats", "dogs"] and card["channels"] == len(mode) and card["image_size"] == 24
    assert card["mean"] == pytest.approx(data.mean.tolist()) and card["std"] == pytest.approx(data.std.tolist())
    assert card["network_channels"] == 3

    library = torch.cat(trainer(tmp_path).predict(loaded, datamodule=data))  # the library's test predictions
    subprocess.run([sys.executable, "-c", OUTSIDE, str(tmp_path), str(tmp_path / "data")], check=True,
                   env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, timeout=300)
    outside = torch.load(tmp_path / "outside.pt", weights_only=True)
    assert len(library) == 8 and library.argmax(1).unique().numel() >= 1
    for form, probabilities in outside.items():
        torch.testing.assert_close(probabilities, library, atol=1e-5, rtol=0, msg=form)


def test_export_without_a_record_of_the_preprocessing_writes_the_state_dict_alone_and_says_why(tmp_path, capsys):
    model = Supervised(student={"name": "small_cnn", "width": 4}, num_classes=10, input_shape=(1, 8, 8))
    assert model.export_student(str(tmp_path / "s.pt")) == {"state_dict": str(tmp_path / "s.pt")}
    assert "pass datamodule=" in capsys.readouterr().out and sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]
    assert torch.load(tmp_path / "s.pt", weights_only=True).keys() == model.student.state_dict().keys()


def test_a_kd_checkpoint_carries_the_preprocessing_to_the_export(tmp_path, tiny_teacher):
    data = DigitsDataModule()
    model = KD(student=TINY_CNN, teacher=TINY_CNN, teacher_ckpt=tiny_teacher, num_classes=10, input_shape=(1, 8, 8))
    fit = trainer(tmp_path, max_steps=1)
    fit.fit(model, data)
    fit.save_checkpoint(tmp_path / "kd.ckpt")
    files = KD.load_from_checkpoint(tmp_path / "kd.ckpt").export_student(str(tmp_path / "s.pt"))
    assert set(files) == {"state_dict", "preprocessing", "torchscript", "onnx"}
    card = json.loads((tmp_path / "s.json").read_text())
    assert card["mean"] == pytest.approx(data.mean.tolist()) and card["std"] == pytest.approx(data.std.tolist())
    assert card["classes"] == [str(c) for c in range(10)] and (card["channels"], card["image_size"]) == (1, 8)
