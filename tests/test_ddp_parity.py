"""DDP parity of KD: 2 processes (gloo, CPU) end with the student of 1 process on the global batch.

Also a script: ``python tests/test_ddp_parity.py OUT_DIR`` runs the 2-process fit; each rank
saves its initial student, the (augmented) batches it trained on and its final student.

The networks have no BatchNorm (``helpers.nets.tiny_mlp``): in training mode BatchNorm normalizes
each process's half batch with that half's statistics, so the per-process forward differs from
the global-batch forward. SyncBatchNorm would fix that, but torch runs it on GPUs only; the
frozen teacher is in eval mode anyway. Without BatchNorm, the all-reduced mean of the two
half-batch gradients equals the gradient of the global batch (mean losses, equal halves).
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import fit_tiny_mlps_on_two_processes, run_ddp_script
from helpers.nets import tiny_mlp
from lightning_kd.methods import KD

LR, T, CE_WEIGHT, KD_WEIGHT = 0.1, 4.0, 0.1, 0.9


class SavingKD(KD):
    """Each rank saves its initial student, its batches and its final student."""

    out_dir = Path(".")

    def on_train_start(self):
        self.initial = copy.deepcopy(self.student.state_dict())
        self.batches = []

    def distill_losses(self, student, teacher, batch):
        self.batches.append((batch[0].clone(), batch[1].clone()))
        return super().distill_losses(student, teacher, batch)

    def on_train_end(self):
        torch.save({"initial": self.initial, "final": self.student.state_dict(), "batches": self.batches},
                   self.out_dir / f"rank{self.global_rank}.pt")


def ddp_run(out_dir: Path) -> None:
    SavingKD.out_dir = out_dir
    fit_tiny_mlps_on_two_processes(SavingKD, out_dir, LR, temperature=T, ce_weight=CE_WEIGHT, kd_weight=KD_WEIGHT)


def reference_global_batch_run(initial, teacher_state, batches0, batches1):
    """Hinton KD in plain PyTorch, one process, on the concatenated batches (formula written out)."""
    student, teacher = tiny_mlp(), tiny_mlp()
    student.load_state_dict(initial)
    teacher.load_state_dict(teacher_state)
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    for (x0, y0), (x1, y1) in zip(batches0, batches1):
        x, y = torch.cat([x0, x1]), torch.cat([y0, y1])
        logits = student(x)
        with torch.no_grad():
            p_t = torch.softmax(teacher(x) / T, 1)
        kl = (p_t * (p_t.log() - torch.log_softmax(logits / T, 1))).sum(1).mean() * T * T
        optimizer.zero_grad()
        (CE_WEIGHT * F.cross_entropy(logits, y) + KD_WEIGHT * kl).backward()
        optimizer.step()
    return student.state_dict()


@pytest.mark.slow
def test_ddp_kd_student_equals_one_process_on_the_global_batch(tmp_path):
    subprocess.run([sys.executable, __file__, str(tmp_path)], check=True, cwd=tmp_path, timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(rank0["batches"]) == len(rank1["batches"]) == 3
    assert not torch.equal(rank0["batches"][0][0], rank1["batches"][0][0]), "ranks saw the same data"
    teacher = torch.load(tmp_path / "teacher.pt", weights_only=True)
    expected = reference_global_batch_run(rank0["initial"], teacher, rank0["batches"], rank1["batches"])
    for k, want in expected.items():
        assert torch.equal(rank0["initial"][k], rank1["initial"][k]), k
        assert torch.equal(rank0["final"][k], rank1["final"][k]), k
        torch.testing.assert_close(rank0["final"][k], want, rtol=1e-5, atol=1e-6)
        assert not torch.equal(rank0["initial"][k], want), f"{k} did not move"


if __name__ == "__main__":
    run_ddp_script(ddp_run, Path(sys.argv[1]))
