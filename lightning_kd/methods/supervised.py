"""Plain supervised training: the teachers and the student baselines."""
from __future__ import annotations

from lightning_kd.base import StudentModule


class Supervised(StudentModule):
    """Cross-entropy training of ``student`` alone (no teacher).

    Used to train teachers (their checkpoints become ``teacher_ckpt`` of a distillation run)
    and the student baselines every method is compared against.

    Args:
        **kwargs: see :class:`~lightning_kd.base.StudentModule`.
    """
