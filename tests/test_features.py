"""FeatureHooks: captured tensors are the modules' own outputs/inputs, read once; hooks come off cleanly."""
import pytest
import torch
from torch import nn

from lightning_kd.features import FeatureHooks
from lightning_kd.models import build_network


@pytest.fixture
def net():
    torch.manual_seed(0)
    return build_network("resnet8x4", num_classes=10).eval()


def test_output_capture_equals_module_output(net):
    x = torch.randn(2, 3, 32, 32)
    hooks = FeatureHooks(net, ["layer1", "layer3", "pool"])
    logits = net(x)
    features = hooks.pop()
    assert list(features) == ["layer1", "layer3", "pool"]
    f1, f3, emb = features.values()
    with torch.no_grad():
        expected1 = net.layer1(net.stem(x))
        expected3 = net.layer3(net.layer2(expected1))
        expected_emb = net.pool(expected3)
    assert torch.equal(f1, expected1) and torch.equal(f3, expected3) and torch.equal(emb, expected_emb)
    assert f1.shape == (2, 64, 32, 32) and f3.shape == (2, 256, 8, 8) and emb.shape == (2, 256)
    assert torch.allclose(net.fc(emb), logits)


def test_input_capture_is_the_first_positional_input(net):
    x = torch.randn(2, 3, 32, 32)
    hooks = FeatureHooks(net, ["fc"], capture="input")
    net(x)
    fc_input = hooks.pop()["fc"]
    assert torch.equal(fc_input, net.pool(net.layer3(net.layer2(net.layer1(net.stem(x))))))


def test_nested_dotted_names():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    hooks = FeatureHooks(model, ["1.1"])
    out = model(torch.randn(5, 3))
    assert torch.equal(hooks.pop()["1.1"], out)


def test_remove_detaches_every_hook(net):
    hooks = FeatureHooks(net, ["layer1", "layer2"])
    assert len(net.layer1._forward_hooks) == 1 and len(net.layer2._forward_hooks) == 1
    hooks.remove()
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    net(torch.randn(2, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no features recorded"):
        hooks.pop()


def test_unknown_name_lists_closest_valid_names(net):
    with pytest.raises(ValueError) as err:
        FeatureHooks(net, ["layer4"])
    message = str(err.value)
    assert "'layer4'" in message and "layer1" in message and "closest valid names" in message


def test_features_before_forward_is_an_error(net):
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        FeatureHooks(net, ["layer1"]).pop()


def test_pop_reads_each_forward_once(net):
    hooks = FeatureHooks(net, ["layer1"])
    net(torch.randn(1, 3, 32, 32))
    first = hooks.pop()["layer1"]
    with pytest.raises(RuntimeError, match="no features recorded"):  # read and cleared
        hooks.pop()
    x = torch.randn(1, 3, 32, 32)
    net(x)
    second = hooks.pop()["layer1"]
    assert not torch.equal(first, second) and torch.equal(second, net.layer1(net.stem(x)))
