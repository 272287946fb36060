"""CRD as a method: its losses through the module equal the pure parts on a fixed batch, its bank and weights
under DDP (2 gloo processes) equal one process on the global batch, and data it cannot use is refused
before training. Exact resume, frozen teacher and checkpoints: tests/test_resume.py, tests/test_reliability.py.

Also a script: ``python tests/test_crd.py OUT_DIR`` runs the 2-process fit; each rank saves its initial
state (student, heads, bank, the draws' seed), the batches it trained on (with their indices) and its final state.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from helpers import build_method, fit_tiny_mlps_on_two_processes, run_ddp_script, trainer as quick_trainer
from helpers.nets import tiny_mlp
from lightning_kd.batch import Batch
from lightning_kd.comparison_parts import ContrastMemory, ContrastSampler, EmbedHead
from lightning_kd.datamodules import DigitsDataModule
from lightning_kd.losses import crd_nce_loss, kd_loss
from lightning_kd.methods import CRD

LR, NEGATIVES, CRD_WEIGHT = 0.1, 6, 0.8


# ----------------------------------------------------------------------------- the module = the parts
def test_crd_losses_through_the_module_equal_the_pure_parts_on_a_fixed_batch(tiny_teacher):
    torch.manual_seed(0)
    model = build_method("CRD", tiny_teacher, negatives=NEGATIVES, kd_weight=0.5)
    labels = torch.arange(40) % 10
    model.build_memory(40)
    model.sampler = ContrastSampler(NEGATIVES, 40, labels)
    model.generator = torch.Generator().manual_seed(3)
    memory_before, original = copy.deepcopy(model.memory), copy.deepcopy(model.memory)
    x, index = torch.randn(4, 1, 8, 8), torch.tensor([3, 17, 22, 39])
    batch = Batch(x, labels[index], index)
    student, teacher = model.student_forward(x), model.teacher(x)
    losses = model.distill_losses(student, teacher, batch)

    contrast = ContrastSampler(NEGATIVES, 40, labels)(index, torch.Generator().manual_seed(3))
    s_embed = model.embed_student(student.features["pool"])
    t_embed = model.embed_teacher(teacher.features["pool"])
    s_scores, t_scores = memory_before(s_embed, t_embed, index, contrast)
    torch.testing.assert_close(losses["crd"], crd_nce_loss(s_scores, 40) + crd_nce_loss(t_scores, 40))
    torch.testing.assert_close(losses["ce"], F.cross_entropy(student.logits, batch.y))
    torch.testing.assert_close(losses["kd"], kd_loss(student.logits, teacher.logits, 4.0))
    for name in ("student_memory", "teacher_memory", "normalizers"):
        torch.testing.assert_close(getattr(model.memory, name), getattr(memory_before, name))
    moved = torch.zeros(40, dtype=torch.bool)
    moved[index] = True
    for name in ("student_memory", "teacher_memory"):  # the batch's rows, and only those
        now, before = getattr(model.memory, name), getattr(original, name)
        assert torch.equal(now[~moved], before[~moved]) and (now[moved] != before[moved]).any(dim=1).all()
    losses["crd"].backward()
    assert model.embed_student.linear.weight.grad.abs().sum() > 0 and model.embed_teacher.linear.weight.grad.abs().sum() > 0
    assert model.adapters().keys() == {"embed_student", "embed_teacher"}


# ----------------------------------------------------------------------------- refused before training
class NoLabelsDigits(DigitsDataModule):
    """Digits whose training labels are not known ahead (as streamed shards)."""

    train_labels = None


def refused(model, data, **fit) -> str:
    trainer = quick_trainer(None)
    with pytest.raises(ValueError) as info:
        trainer.fit(model, **fit) if data is None else trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0
    return str(info.value)


def test_crd_on_data_without_indices_is_refused_before_training_with_the_fix(tiny_teacher):
    loader = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8), torch.arange(32) % 10), batch_size=8)
    message = refused(build_method("CRD", tiny_teacher, negatives=8), None, train_dataloaders=loader)
    assert "CRD needs the training data's ['index', 'train_size', 'train_labels']: pass a lightning_kd datamodule" \
        in message


def test_crd_with_more_negatives_than_samples_is_refused_before_training_with_the_fix(tiny_teacher):
    message = refused(build_method("CRD", tiny_teacher, negatives=2000), DigitsDataModule(batch_size=8))
    assert message == ("CRD draws 2000 negatives per sample, and the training set has 1257 samples: set "
                       "model.init_args.negatives below 1257 (e.g. 314).")


def test_other_class_negatives_on_data_without_labels_are_refused_and_any_trains(tiny_teacher):
    message = refused(build_method("CRD", tiny_teacher, negatives=8), NoLabelsDigits(batch_size=8))
    assert message.endswith("or set model.init_args.negative_mode: any and positive: exact.")
    model = build_method("CRD", tiny_teacher, negatives=8, negative_mode="any")
    data = NoLabelsDigits(batch_size=8)
    quick_trainer(None).fit(model, datamodule=data)
    assert data.return_index and model.memory.num_samples == 1257 and model.trainer.global_step == 2


# ----------------------------------------------------------------------------- DDP = one process
class SavingCRD(CRD):
    """Each rank saves its initial state, its batches and its final state."""

    out_dir = Path(".")

    def on_train_start(self):
        self.initial = copy.deepcopy(self.state_dict())
        self.seed, self.batches = self.generator.initial_seed(), []

    def distill_losses(self, student, teacher, batch):
        self.batches.append(tuple(t.clone() for t in batch))
        return super().distill_losses(student, teacher, batch)

    def on_train_end(self):
        torch.save({"initial": self.initial, "final": self.state_dict(), "batches": self.batches, "seed": self.seed,
                    "labels": self.trainer.datamodule.train_labels}, self.out_dir / f"rank{self.global_rank}.pt")


def ddp_run(out_dir: Path) -> None:
    SavingCRD.out_dir = out_dir
    fit_tiny_mlps_on_two_processes(SavingCRD, out_dir, LR, student_layer="body", teacher_layer="body", embed_dim=8,
                                   negatives=NEGATIVES, crd_weight=CRD_WEIGHT)


def reference_global_batch_run(saved: dict, teacher_state: dict, batches0, batches1) -> dict:
    """CRD from the parts, one process, on the concatenated batches."""
    nets = {side: tiny_mlp() for side in ("student", "teacher")}
    heads = {side: EmbedHead(16, 8) for side in ("embed_student", "embed_teacher")}
    memory = ContrastMemory(64, 8)
    for name, module in {"student": nets["student"], **heads, "memory": memory}.items():
        module.load_state_dict({k[len(name) + 1:]: v for k, v in saved["initial"].items() if k.startswith(f"{name}.")})
    nets["teacher"].load_state_dict(teacher_state)
    sampler, generator = ContrastSampler(NEGATIVES, 64, saved["labels"]), torch.Generator().manual_seed(saved["seed"])
    params = [p for m in (nets["student"], *heads.values()) for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)
    for part0, part1 in zip(batches0, batches1):
        x, y, index = (torch.cat(pair) for pair in zip(part0, part1))
        feature = nets["student"].body(x)
        with torch.no_grad():
            t_feature = nets["teacher"].body(x)
        s_scores, t_scores = memory(heads["embed_student"](feature), heads["embed_teacher"](t_feature), index,
                                    sampler(index, generator))
        loss = F.cross_entropy(nets["student"].fc(feature), y) + \
            CRD_WEIGHT * (crd_nce_loss(s_scores, 64) + crd_nce_loss(t_scores, 64))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    modules = {"student": nets["student"], **heads, "memory": memory}
    return {f"{name}.{k}": v for name, module in modules.items() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_ddp_crd_bank_and_weights_equal_one_process_on_the_global_batch(tmp_path):
    subprocess.run([sys.executable, __file__, str(tmp_path)], check=True, cwd=tmp_path, timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0["batches"]) == len(rank1["batches"]) == 3 and rank0["seed"] == rank1["seed"]
    assert not set(rank0["batches"][0][2].tolist()) & set(rank1["batches"][0][2].tolist()), "ranks saw the same samples"
    teacher = torch.load(tmp_path / "teacher.pt", weights_only=True)
    expected = reference_global_batch_run(rank0, teacher, rank0["batches"], rank1["batches"])
    assert {k for k in expected if k.startswith("memory.")} == {"memory.student_memory", "memory.teacher_memory",
                                                                "memory.normalizers"}
    for k, want in expected.items():
        assert torch.equal(rank0["initial"][k], rank1["initial"][k]), k
        torch.testing.assert_close(rank0["final"][k], rank1["final"][k], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rank0["final"][k], want, rtol=1e-5, atol=1e-6)
        assert not torch.equal(rank0["initial"][k], want), f"{k} did not move"


if __name__ == "__main__":
    run_ddp_script(ddp_run, Path(sys.argv[1]))
