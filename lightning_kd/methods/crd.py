"""Contrastive Representation Distillation: the student's embedding contrasted with the teacher's over a
memory bank of the training set.

Tian, Krishnan, Isola. "Contrastive Representation Distillation", ICLR 2020.
https://arxiv.org/abs/1910.10699
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lightning_kd.base import DistillationModule
from lightning_kd.comparison_parts import NEGATIVE_MODES, POSITIVE_MODES, ContrastMemory, ContrastSampler, EmbedHead
from lightning_kd.distributed import average_across_ranks, gather, own_rows
from lightning_kd.losses import check_temperature, crd_nce_loss, kd_loss


class CRD(DistillationModule):
    """CRD: ``ce_weight * CE + kd_weight * KD(T) + crd_weight * (NCE of the student + NCE of the teacher)``.

    "Contrastive Representation Distillation" (Tian et al., ICLR 2020), https://arxiv.org/abs/1910.10699.
    The penultimate features (``pool`` of the zoo's networks) go through a linear embedding head per side
    (:class:`~lightning_kd.comparison_parts.EmbedHead`, trained with the student, exported only when asked);
    each sample's student embedding is scored against the teacher memory's rows of its positive and its
    ``negatives`` negatives, and its teacher embedding against the student memory's
    (:class:`~lightning_kd.comparison_parts.ContrastMemory`, one momentum-averaged row per training sample and
    side, sized from the data at setup, in checkpoints). Defaults are the authors' CIFAR-100 ones
    (RepDistiller's ``train_student.py`` and README: ``--distill crd -r 1 -a 0 -b 0.8``, ``nce_k`` 16384,
    ``feat_dim`` 128, ``nce_t`` 0.07, ``nce_m`` 0.5, mode ``exact``; mdistiller's CRD config is the same).

    Under DDP every process draws the contrast rows of the global batch with the same generator and keeps its
    own, every process updates its memory with the global batch's embeddings (all-gathered), and ``Z`` is the
    global batch's mean score: the run equals one process on the global batch
    (``tests/test_crd.py``). The draws' generator is in checkpoints, so a resume is exact.

    Args:
        crd_weight: weight of the contrastive term (the authors' ``-b`` 0.8).
        ce_weight: weight of the cross-entropy with the labels (``-r`` 1).
        kd_weight: weight of Hinton KD beside it (``-a``: 0 for CRD, 1 for their "CRD+KD").
        temperature: KD's temperature.
        student_layer, teacher_layer: the layers whose (flattened) output is embedded.
        embed_dim: the embedding size (``feat_dim`` 128).
        negatives: negatives per sample (``nce_k`` 16384); must be below the training set's size.
        nce_temperature: the scores' temperature (``nce_t`` 0.07).
        momentum: the memory rows' momentum (``nce_m`` 0.5).
        negative_mode: ``other_classes`` (default, what the authors' training code ships: negatives among the
            samples of the other classes; needs the training labels) or ``any`` (uniform over the training
            set, their memory's fallback; needs no labels).
        positive: ``exact`` (default, the sample itself) or ``relax`` (a sample of its class): ``--mode``.
        **kwargs: see :class:`~lightning_kd.base.DistillationModule`.
    """

    def __init__(self, crd_weight: float = 0.8, ce_weight: float = 1.0, kd_weight: float = 0.0,
                 temperature: float = 4.0, student_layer: str = "pool", teacher_layer: str = "pool",
                 embed_dim: int = 128, negatives: int = 16384, nce_temperature: float = 0.07, momentum: float = 0.5,
                 negative_mode: str = "other_classes", positive: str = "exact", **kwargs):
        super().__init__(**kwargs)
        if negative_mode not in NEGATIVE_MODES or positive not in POSITIVE_MODES:
            raise ValueError(f"CRD negative_mode must be one of {NEGATIVE_MODES} and positive one of {POSITIVE_MODES}, "
                             f"got {negative_mode!r} and {positive!r}.")
        if negatives < 1 or embed_dim < 1:
            raise ValueError(f"CRD needs negatives >= 1 and embed_dim >= 1, got {negatives} and {embed_dim}.")
        self.temperature, self.nce_temperature = check_temperature(temperature), check_temperature(nce_temperature)
        self.negatives, self.momentum, self.embed_dim = int(negatives), float(momentum), int(embed_dim)
        self.negative_mode, self.positive = negative_mode, positive
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        student_features, teacher_features = self.watch_layers([student_layer], [teacher_layer])
        self.embed_student = EmbedHead(student_features[student_layer].flatten(1).shape[1], embed_dim)
        self.embed_teacher = EmbedHead(teacher_features[teacher_layer].flatten(1).shape[1], embed_dim)
        labels = negative_mode == "other_classes" or positive == "relax"
        self.data_needs = ("index", "train_size", *(("train_labels",) if labels else ()))
        self.data_hints = {"train_labels": "set model.init_args.negative_mode: any and positive: exact"}
        self.memory: Optional[ContrastMemory] = None  # one row per training sample: built when the size is known
        self.sampler: Optional[ContrastSampler] = None
        self.generator: Optional[torch.Generator] = None
        weights = {"ce": ce_weight, "kd": kd_weight, "crd": crd_weight}
        self.loss_weights = {name: w for name, w in weights.items() if w != 0 or name == "ce"}

    def build_memory(self, num_samples: int) -> None:
        self.memory = ContrastMemory(num_samples, self.embed_dim, self.nce_temperature, self.momentum)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # checks data_needs first
        if stage != "fit":
            return
        data = self.trainer.datamodule
        size = int(data.train_size)
        if self.negatives >= size:
            raise ValueError(f"CRD draws {self.negatives} negatives per sample, and the training set has {size} "
                             f"samples: set model.init_args.negatives below {size} (e.g. {max(1, size // 4)}).")
        if self.memory is None or self.memory.num_samples != size:
            self.build_memory(size)
        labels = data.train_labels if "train_labels" in self.data_needs else None
        self.sampler = ContrastSampler(self.negatives, size, None if labels is None else torch.as_tensor(labels),
                                       self.negative_mode, self.positive)
        # One seed for every process (drawn here, broadcast from rank 0): all draw the same contrast rows.
        seed = self.trainer.strategy.broadcast(int(torch.randint(0, 2 ** 62, ()).item()))
        self.generator = torch.Generator(device=self.trainer.strategy.root_device).manual_seed(seed)

    def distill_losses(self, student, teacher, batch):
        if batch.index is None:
            raise ValueError("CRD needs the samples' indices in every training batch: train it through trainer.fit "
                             "with a lightning_kd datamodule, which gives them.")
        losses = {"ce": F.cross_entropy(student.logits, batch.y)}
        if "kd" in self.loss_weights:
            losses["kd"] = kd_loss(student.logits, teacher.logits, self.temperature)
        if "crd" not in self.loss_weights:  # crd_weight 0: the student's CE (and KD) alone, the bank untouched
            return losses
        student_embed = self.embed_student(student.features[self.student_layer])
        teacher_embed = self.embed_teacher(teacher.features[self.teacher_layer])
        index = gather(self, batch.index)
        contrast = own_rows(self, self.sampler(index, self.generator), len(batch.index))
        student_scores, teacher_scores = self.memory.scores(student_embed, teacher_embed, contrast,
                                                            average=lambda t: average_across_ranks([t]))
        self.memory.update(index, gather(self, student_embed), gather(self, teacher_embed))
        size = self.memory.num_samples
        losses["crd"] = crd_nce_loss(student_scores, size) + crd_nce_loss(teacher_scores, size)
        return losses

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.generator is not None:
            checkpoint["crd_generator"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        rows = checkpoint["state_dict"]["memory.student_memory"].shape[0]
        if self.memory is None:  # load_from_checkpoint: no data, the checkpoint's size
            self.build_memory(rows)
        elif self.memory.num_samples != rows:
            raise ValueError(f"this checkpoint's CRD memory has {rows} rows and the training set has "
                             f"{self.memory.num_samples} samples: resume with the data it was trained on.")
        if self.generator is not None and "crd_generator" in checkpoint:
            self.generator.set_state(checkpoint["crd_generator"])
