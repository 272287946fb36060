"""ReviewKD as a method: its losses through the module equal the pure parts on a fixed batch, the teacher's
maps are its stages' pre-activations, the fusion trains with the student and is exported only when asked.
Exact resume, frozen teacher and checkpoints: tests/test_resume.py, tests/test_reliability.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import build_method, save_teacher
from lightning_kd.batch import Batch
from lightning_kd.features import FeatureHooks
from lightning_kd.losses import hcl_loss
from lightning_kd.methods import ReviewKD


def test_reviewkd_losses_through_the_module_equal_the_pure_parts_on_a_fixed_batch(tiny_teacher):
    torch.manual_seed(0)
    model = build_method("ReviewKD", tiny_teacher)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 5, 9])
    student, teacher = model.student_forward(x), model.teacher(x)
    losses = model.distill_losses(student, teacher, Batch(x, y))

    def maps(features):  # the three stages and the pooled feature as a 1x1 map, shallow to deep
        return [features["layer1"], features["layer2"], features["layer3"], features["pool"][:, :, None, None]]

    teacher_maps = maps(teacher.features)
    fused = model.fusion(maps(student.features), out_sizes=[m.shape[-2:] for m in teacher_maps])
    torch.testing.assert_close(losses["review"], hcl_loss(fused, teacher_maps, (4, 2, 1)))
    torch.testing.assert_close(losses["ce"], F.cross_entropy(student.logits, y))
    losses["review"].backward()
    assert all(p.grad is not None for p in model.fusion.parameters())
    assert model.adapters().keys() == {"fusion"}
    assert model.weight_warmup == {"review": pytest.approx(20 / 240)}  # the authors' 20 of 240 epochs


def test_the_teacher_maps_are_its_stages_pre_activations(tmp_path):
    teacher = save_teacher(tmp_path / "t.pt", "resnet8x4", in_channels=3)
    model = ReviewKD(student="resnet8x4", teacher="resnet8x4", teacher_ckpt=teacher, input_shape=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    stages = FeatureHooks(model.teacher.net, ["layer1", "layer2", "layer3"])  # the post-activation outputs
    features = model.teacher(x).features
    outputs = stages.pop()
    for stage, layer in zip(("layer1", "layer2", "layer3"), model.teacher_layers):
        assert layer.startswith(f"{stage}.") and layer.endswith(":input")
        preactivation = features[layer]
        assert (preactivation < 0).any()
        torch.testing.assert_close(preactivation.relu(), outputs[stage], rtol=0, atol=0)
    assert model.student_layers == ["layer1", "layer2", "layer3", "pool"] and model.teacher_layers[-1] == "pool"


def test_the_fusion_is_exported_only_when_asked(tiny_teacher, tmp_path):
    model = build_method("ReviewKD", tiny_teacher)
    model.export_student(tmp_path / "student.pt")
    model.export_student(tmp_path / "both.pt", adapters=True)
    assert torch.load(tmp_path / "student.pt", weights_only=True).keys() == model.student.state_dict().keys()
    both = torch.load(tmp_path / "both.pt", weights_only=True)
    assert both["adapters"]["fusion"].keys() == model.fusion.state_dict().keys()
    with pytest.raises(ValueError, match="ReviewKD pairs student and teacher layers one to one"):
        build_method("ReviewKD", tiny_teacher, student_layers=["layer1", "layer2"])
