"""Tests for the model zoo in ``lightning_kd.models`` (CPU, small inputs)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers.published import NETWORKS, load_fixture
from lightning_kd.models import MODELS, CifarResNet, MobileNetV2, SmallCNN, WideResNet, build_network

CIFAR_NETS = NETWORKS  # those of the CRD paper's CIFAR-100 table
RESNETS = ["resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4"]
# Stage widths and sizes for a 32x32 input, from the CRD code (RepDistiller's feature points f1..f4).
STAGES = {"ResNet50": [(256, 32), (512, 16), (1024, 8), (2048, 4)],
          "MobileNetV2": [(12, 16), (16, 8), (48, 4), (160, 2)],
          "ShuffleNetV1": [(240, 16), (480, 8), (960, 4)],
          "ShuffleNetV2": [(116, 16), (232, 8), (464, 4)]}


pytestmark = pytest.mark.usefixtures("single_thread")


def _run_with_hooks(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward ``x`` in eval mode, returning logits and the outputs of stages and ``pool``."""
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name in [*model.stage_names, "pool"]
    ]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    return logits, outputs


def test_models_registry_and_signatures():
    assert set(MODELS) == {*CIFAR_NETS, "small_cnn"}
    for name, constructor in MODELS.items():
        params = inspect.signature(constructor).parameters
        expected = (10, 1) if name == "small_cnn" else (100, 3)
        assert (params["num_classes"].default, params["in_channels"].default) == expected, name


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_parameter_counts_equal_the_crd_code(name):
    """The exact counts of the CRD paper's code (RepDistiller's models at num_classes=100, recorded in the
    fixture by tests/fixtures/published/make_fixtures.py): the paper's table gives them in millions."""
    model = MODELS[name](num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == load_fixture(name)["parameters"]


@pytest.mark.parametrize("name", CIFAR_NETS)
def test_cifar_net_output_and_features(name):
    torch.manual_seed(0)
    model = MODELS[name](num_classes=10)
    named = dict(model.named_modules())
    assert {"stem", "pool", "fc", *model.stage_names} <= set(named)
    assert model.stage_names[:3] == ["layer1", "layer2", "layer3"]
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == model.embedding_dim

    logits, feats = _run_with_hooks(model, torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert feats["pool"].shape == (2, model.embedding_dim)
    torch.testing.assert_close(model.fc(feats["pool"]), logits)  # pool is the penultimate embedding
    if not isinstance(model, (WideResNet, MobileNetV2)):  # the others' stages end in a ReLU
        assert all(feats[s].min() >= 0 for s in model.stage_names)
    elif isinstance(model, WideResNet):  # pre-activation: only layer3 ends in a ReLU (the final BN-ReLU)
        assert feats["layer3"].min() >= 0 and feats["layer2"].min() < 0
    else:  # linear bottlenecks, then the 1x1 conv-BN-ReLU inside pool
        assert all(feats[s].min() < 0 for s in model.stage_names) and feats["pool"].min() >= 0
    if name in RESNETS:
        assert isinstance(model, CifarResNet)
        assert [feats[s].shape[-1] for s in model.stage_names] == [32, 16, 8]
    if name in STAGES:
        assert [(feats[s].shape[1], feats[s].shape[-1]) for s in model.stage_names] == STAGES[name]


def test_small_cnn_on_digits_shape():
    model = SmallCNN(width=8)
    logits, feats = _run_with_hooks(model, torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10)
    assert feats["pool"].shape == (2, model.embedding_dim)
    assert [feats[s].shape[-1] for s in model.stage_names] == [8, 4, 2]
    model.train()
    model(torch.randn(2, 1, 8, 8)).sum().backward()  # trains with batch size 2
    assert model.fc.weight.grad is not None


def test_build_network_by_name_passes_in_channels():
    model = build_network("resnet8x4", num_classes=7, in_channels=1)
    assert isinstance(model, CifarResNet)
    assert model.stem[0].in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_build_network_by_dotted_path():
    model = build_network("torchvision.models.resnet18", num_classes=10)
    assert model.fc.out_features == 10
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    wrn = build_network("lightning_kd.models.wrn.wrn_16_2", num_classes=5, in_channels=1)
    assert isinstance(wrn, WideResNet) and wrn.stem.in_channels == 1


def test_build_network_by_dict_with_kwargs():
    spec = {"name": "small_cnn", "width": 4}
    model = build_network(spec, num_classes=10, in_channels=1)
    assert isinstance(model, SmallCNN) and model.embedding_dim == 16
    assert spec == {"name": "small_cnn", "width": 4}  # the caller's dict is not modified
    assert build_network({"name": "vgg8"}, num_classes=3).fc.out_features == 3


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="Did you mean 'resnet8x4'") as info:
        build_network("resnet8x5", num_classes=10)
    assert "Unknown network 'resnet8x5'" in str(info.value)
    assert all(name in str(info.value) for name in MODELS)  # lists all valid names


def test_unimportable_dotted_path():
    with pytest.raises(ValueError, match="no_such_package_xyz.net") as info:
        build_network("no_such_package_xyz.net", num_classes=10)
    assert "ModuleNotFoundError" in str(info.value)
    with pytest.raises(ValueError, match="torchvision.models.not_a_net"):
        build_network("torchvision.models.not_a_net", num_classes=10)


def test_greyscale_into_a_3_channel_torchvision_net_is_replicated_and_said_once(caplog, monkeypatch):
    import torchvision

    from lightning_kd.models import inputs

    monkeypatch.setattr(inputs, "_SAID", set())
    with caplog.at_level(logging.INFO):
        grey = build_network("torchvision.models.resnet18", num_classes=10, in_channels=1).eval()
        build_network("torchvision.models.resnet18", num_classes=10, in_channels=1)
    said = [r.getMessage() for r in caplog.records if "replicated" in r.getMessage()]
    assert len(said) == 1 and "--data.channels 3" in said[0]
    plain = torchvision.models.resnet18(num_classes=10).eval()
    assert plain.load_state_dict(grey.state_dict()) is not None  # same keys and shapes: no wrapper
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(grey(x), plain(torch.cat([x, x, x], 1)))


def test_other_channel_counts_into_a_torchvision_net_name_the_rgb_option():
    with pytest.raises(ValueError, match="3-channel") as info:
        build_network("torchvision.models.resnet18", num_classes=10, in_channels=2)
    assert "torchvision.models.resnet18" in str(info.value) and "--data.channels 3" in str(info.value)


def test_published_weights_offline_are_one_line_naming_the_file_folder_and_weights_null(tmp_path, monkeypatch,
                                                                                        capsys):
    import urllib.error

    import torchvision

    from lightning_kd.cli import main

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data", "DigitsDataModule", "--model", "Supervised", "--trainer.logger", "false",
              "--model.init_args.student", "{name: torchvision.models.resnet18, weights: IMAGENET1K_V1}",
              f"--checkpoint.dirpath={tmp_path / 'run'}"])
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    error = [line for line in lines if line.startswith("lightning-kd: ")]
    assert len(error) == 1 and "Traceback" not in "".join(lines), lines
    file = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    assert file in error[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in error[0]
    assert "weights: null" in error[0]


def test_dict_without_name_is_rejected():
    with pytest.raises(ValueError, match="must contain a 'name'"):
        build_network({"width": 4}, num_classes=10)


def test_dict_with_conflicting_num_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        build_network({"name": "resnet20", "num_classes": 5}, num_classes=10)


def test_published_weights_load_from_the_local_cache_and_the_head_fits_the_data(tmp_path, monkeypatch):
    import torchvision

    from lightning_kd.teacher import FrozenTeacher

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an offline hub cache holding the weights file
    published = torchvision.models.resnet18()  # stands in for the downloaded ImageNet weights
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(published.state_dict(), cache / Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name)
    spec = {"name": "torchvision.models.resnet18", "weights": "IMAGENET1K_V1"}
    reference = published.state_dict()

    student = build_network(spec, num_classes=10)  # fine-tuning: the published backbone, a new 10-class head
    weights = student.state_dict()
    assert all(torch.equal(weights[k], reference[k]) for k in reference if not k.startswith("fc."))
    assert student.fc.out_features == 10 and student.fc.in_features == 512 and student.new_head

    teacher = FrozenTeacher(spec, None, 1000, 3)  # its own head fits the data: no teacher_ckpt needed
    assert all(torch.equal(v, reference[k]) for k, v in teacher.net.state_dict().items())
    with pytest.raises(ValueError, match="classify other classes than the data's 10"):
        FrozenTeacher(spec, None, 10, 3)  # an untrained head cannot teach
    with pytest.raises(ValueError, match="the teacher needs trained weights: set `teacher_ckpt`"):
        FrozenTeacher("resnet20", None, 10, 3)
