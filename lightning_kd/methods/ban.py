"""Born-Again Networks: a student of the teacher's own architecture trained from the teacher's predictions.

Furlanello, Lipton, Tschannen, Itti, Anandkumar. "Born-Again Neural Networks", ICML 2018.
https://arxiv.org/abs/1805.04770
"""
from __future__ import annotations

from typing import Literal, Optional

import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.losses import kd_loss


class BAN(DistillationModule):
    """One born-again generation: the student matches the teacher's output distribution, unsoftened.

    The paper's objective (sec. 3) is the cross-entropy between the teacher's and the student's
    outputs "without softening the logits" (T = 1; sec. 2.1). Its Table 2 names two variants:

    - ``objective: BAN`` (default): the teacher's outputs only; the paper's sequences and ensembles
      (BAN-1, BAN-2, BAN-3, Ens*2, Ens*3) are trained this way.
    - ``objective: BAN+L``: the same term plus the cross-entropy with the labels. The paper does not
      state how the two are weighed; ``label_weight`` (default 1: equal weights) is that choice.

    The term is :func:`~lightning_kd.losses.kd_loss` at T = 1, ``KL(p_t || p_s)``: the paper's
    cross-entropy ``-sum p_t log p_s`` minus the teacher's entropy, which does not depend on the student,
    so the gradients and the optimum are the paper's; the logged ``train/kd`` is 0 at a perfect match.
    The teacher is any network spec with weights, also an ensemble of checkpoints
    (:class:`~lightning_kd.models.CheckpointEnsemble`). Generations in sequence and the BAN ensemble:
    ``python -m lightning_kd.tools.born_again``.

    Args:
        objective: ``"BAN"`` or ``"BAN+L"``, as above.
        label_weight: weight of the label cross-entropy; only for ``BAN+L`` (default 1 there).
        **kwargs: see :class:`~lightning_kd.base.DistillationModule` (``teacher`` is usually the
            student's own spec, ``teacher_ckpt`` the previous generation's ``best.ckpt``).
    """

    def __init__(self, objective: Literal["BAN", "BAN+L"] = "BAN", label_weight: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        if objective not in ("BAN", "BAN+L"):
            raise ValueError(f"BAN objective must be 'BAN' (teacher's outputs only) or 'BAN+L' (plus the labels), "
                             f"got {objective!r}.")
        if objective == "BAN" and label_weight is not None:
            raise ValueError(f"label_weight={label_weight} weighs the label term, which only objective 'BAN+L' has: "
                             f"set objective: BAN+L, or leave label_weight out.")
        self.objective = objective
        self.loss_weights = {"kd": 1.0} if objective == "BAN" else {
            "kd": 1.0, "ce": 1.0 if label_weight is None else label_weight}

    def distill_losses(self, student, teacher, batch):
        losses = {"kd": kd_loss(student.logits, teacher.logits, temperature=1.0)}
        if "ce" in self.loss_weights:
            losses["ce"] = F.cross_entropy(student.logits, batch.y)
        return losses
