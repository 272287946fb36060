"""Plain supervised training: the teachers and the student baselines."""
from __future__ import annotations

import torch.nn.functional as F

from lightning_kd.base import DistillationModule


class Supervised(DistillationModule):
    """Cross-entropy training of ``student`` alone (no teacher).

    Used to train teachers (their checkpoints become ``teacher_ckpt`` of a distillation run)
    and the student baselines every method is compared against.
    """

    uses_teacher = False

    def distill_losses(self, batch):
        x, y = batch
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits, y)}
