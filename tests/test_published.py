"""The CRD code's checkpoints (RepDistiller's and mdistiller's published teachers) load into our networks
and compute what their networks compute; our students export in their format.

Against fixtures made by running RepDistiller (tests/fixtures/published/README.md): for each network
of the CRD paper's CIFAR-100 table, their state_dict's keys and shapes and their logits for
deterministic weights (rebuilt here from each key and shape, tests/helpers/published.py).
"""
from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import ROOT
from helpers.published import (NETWORKS, fixture_input, load_fixture, save_teacher_of, save_their_checkpoint,
                               split, synthetic_cifar100, their_network)
from lightning_kd.checkpoints import load_network_weights
from lightning_kd.cli import make_cli
from lightning_kd.methods import Supervised
from lightning_kd.models import build_network

pytestmark = pytest.mark.usefixtures("single_thread")


def logits(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def assert_float32_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 precision: the summation order of a pool or a convolution may differ."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("network", NETWORKS)
def test_their_checkpoint_loads_and_computes_their_logits(network, tmp_path):
    fixture = load_fixture(network)
    theirs = save_their_checkpoint(tmp_path / "ckpt_epoch_240.pth", network)
    net = build_network(network, num_classes=100)
    load_network_weights(net, tmp_path / "ckpt_epoch_240.pth", what="teacher_ckpt")
    assert_float32_close(logits(net, fixture_input()), torch.tensor(fixture["logits"]))

    exported = net.repdistiller_state_dict()  # and back: their keys, in their order, shapes and values
    assert [(k, list(v.shape)) for k, v in exported.items()] == [tuple(ks) for ks in fixture["state_dict"]]
    assert all(torch.equal(exported[k], v) and exported[k].dtype == v.dtype for k, v in theirs.items())


def test_a_mismatch_names_their_keys(tmp_path):
    theirs = save_their_checkpoint(tmp_path / "resnet8x4.pth", "resnet8x4")
    with pytest.raises(ValueError, match=r"named as there\) does not fit CifarResNet: 144 of its 206 tensors are "
                                         r"missing \(e\.g\. \['layer1\.1\.bn1\.bias'.*a smaller network"):
        load_network_weights(build_network("resnet32x4", 100), tmp_path / "resnet8x4.pth")

    del theirs["layer3.0.downsample.1.running_var"]
    torch.save({"model": theirs}, tmp_path / "incomplete.pth")
    with pytest.raises(ValueError, match=r"1 of its \d+ tensors are missing \(e\.g\. "
                                         r"\['layer3\.0\.downsample\.1\.running_var'\]"):
        load_network_weights(build_network("resnet8x4", 100), tmp_path / "incomplete.pth")
    with pytest.raises(ValueError, match="classifier with 100 outputs, but the data has num_classes=10"):
        load_network_weights(build_network("resnet8x4", 10), tmp_path / "resnet8x4.pth")


def test_keys_of_our_naming_never_mean_another_tensor_in_theirs():
    """A file is read in our naming or theirs; no key of one names a different tensor in the other."""
    for network in NETWORKS:
        names = build_network(network, 100).repdistiller_names()
        assert all(theirs not in names or names[theirs] == theirs for theirs in names.values()), network


def test_export_student_in_their_format(tmp_path):
    module = Supervised(student="ShuffleNetV2", num_classes=100, input_shape=(3, 32, 32))
    module.export_student(str(tmp_path / "student.pth"), repdistiller=True)
    saved = torch.load(tmp_path / "student.pth", weights_only=True)
    assert list(saved) == ["model"]
    theirs = [tuple(ks) for ks in load_fixture("ShuffleNetV2")["state_dict"]]
    assert [(k, list(v.shape)) for k, v in saved["model"].items()] == theirs
    reloaded = build_network("ShuffleNetV2", 100)
    load_network_weights(reloaded, tmp_path / "student.pth")
    x = fixture_input()
    assert torch.equal(logits(reloaded, x), logits(module.student, x))
    digits = Supervised(student="small_cnn", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="not a network of the CRD code"):
        digits.export_student(str(tmp_path / "s.pth"), repdistiller=True)
    assert not (tmp_path / "s.pth").exists()


def test_cli_test_and_predict_score_their_checkpoint(tmp_path):
    data_args, data = synthetic_cifar100()
    x, y = split(data, "test")
    path = tmp_path / "resnet8x4_vanilla" / "ckpt_epoch_240.pth"
    save_teacher_of("resnet8x4", path, label=int(y[0]))
    spec = json.dumps({"name": "lightning_kd.models.CheckpointEnsemble", "checkpoints": [str(path)],
                       "network": "resnet8x4"})
    args = ["--model=Supervised", f"--model.init_args.student={spec}", *data_args, "--trainer.logger=false",
            "--trainer.accelerator=cpu", f"--checkpoint.dirpath={tmp_path / 'scored'}"]
    expected = logits(their_network("resnet8x4", path), x).double().softmax(1)
    assert expected.argmax(1).tolist() == [int(y[0])] * len(y)

    make_cli(["predict", *args])
    with open(tmp_path / "scored" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    got = torch.tensor([[float(r[f"p_{c}"]) for c in range(100)] for r in rows], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=2e-6)  # the file keeps 6 significant digits
    cli = make_cli(["test", *args])
    assert float(cli.trainer.callback_metrics["test/acc"]) == pytest.approx(float((y == y[0]).double().mean()))


def test_fit_distills_from_their_teacher_file(tmp_path, monkeypatch):
    """The shipped resnet32x4 -> resnet8x4 KD config with RepDistiller's teacher file as teacher_ckpt."""
    monkeypatch.chdir(tmp_path)
    data_args, data = synthetic_cifar100()
    x, y = split(data, "val")
    teacher = tmp_path / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    save_teacher_of("resnet32x4", teacher, label=int(y[0]))
    cli = make_cli(["fit", "-c", str(ROOT / "configs/cifar100/kd_resnet32x4_resnet8x4.yaml"), *data_args,
                    f"--model.init_args.teacher_ckpt={teacher}", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.logger=false",
                    "--trainer.accelerator=cpu", "--trainer.devices=1", f"--checkpoint.dirpath={tmp_path / 'kd'}"])
    assert cli.trainer.global_step == 2
    reference = their_network("resnet32x4", teacher)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in cli.model.teacher.net.state_dict().items())
    assert logits(reference, x).argmax(1).tolist() == [int(y[0])] * len(y)
    assert float(cli.trainer.callback_metrics["teacher/acc"]) == pytest.approx(float((y == y[0]).float().mean()))
