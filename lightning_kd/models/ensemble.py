"""An ensemble of trained checkpoints as one network: the mean of its members' class probabilities.

It is a network spec like any other (``{name: lightning_kd.models.CheckpointEnsemble, checkpoints:
[a.ckpt, b.ckpt]}``), so one class serves three uses: the ``student`` of a ``Supervised`` module for
``lightning-kd test`` / ``predict`` (no ``--ckpt_path``: the members' weights are read when it is
built), the ``teacher`` of any distillation method (KD from an ensemble; no ``teacher_ckpt``), and
the BAN ensemble of ``lightning_kd.tools.born_again`` (Furlanello et al., ICML 2018, sec. 3.1: the
average of the generations' predictions).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from lightning_kd.checkpoints import classifier_key, load_checkpoint_file, load_network_weights, unwrap
from lightning_kd.trust import reading

NetSpec = Union[str, dict[str, Any]]


def member_network(checkpoint: dict, path: str, network: Optional[NetSpec]) -> NetSpec:
    """The network spec of a member: ``network`` when given, else the ``student`` its Lightning checkpoint names."""
    if network is not None:
        return network
    spec = (checkpoint.get("hyper_parameters") or {}).get("student")
    if spec is None:
        raise ValueError(f"ensemble member {path!r} names no network (it is not a Lightning checkpoint of a "
                         f"student module): give the members' architecture as `network:` (e.g. network: resnet8x4).")
    return spec


def member_classes(checkpoint: dict) -> Optional[int]:
    """The classes a member was trained on: its Lightning ``num_classes``, else its classifier's outputs."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if "num_classes" in hparams:
        return int(hparams["num_classes"])
    state = unwrap(checkpoint)
    key = classifier_key(state)
    return None if key is None else int(state[key].shape[0])


class CheckpointEnsemble(nn.Module):
    """Members built from checkpoint files; ``forward`` returns ``log(mean_i softmax(member_i(x)))``.

    Those log-probabilities act as logits: their softmax is the members' mean probability exactly, so
    ``predict`` writes it, ``test`` scores its argmax, and KD reads it as the teacher's distribution.
    Computed with logsumexp in float32, so a class every member rules out is a large negative number,
    not ``-inf`` (which would turn a KL term into NaN).

    Args:
        checkpoints: the members' files: Lightning ``.ckpt`` of any method (the student is taken) or
            plain state_dicts, read with ``weights_only=True`` and loaded strictly.
        network: the members' architecture; default: the ``student`` each Lightning checkpoint names
            (members may then differ in architecture; a name read from a file resolves only to the
            library's, torchvision's and timm's networks or one the user named, see
            :mod:`lightning_kd.trust`). Needed for plain state_dicts.
        num_classes, in_channels: of the data; every member must have been trained on ``num_classes``.
    """

    loads_own_weights = True  # read by FrozenTeacher: a teacher that needs no teacher_ckpt

    def __init__(self, checkpoints: Sequence[str], network: Optional[NetSpec] = None, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        from lightning_kd.models import build_network  # the package imports this module

        paths = [str(p) for p in ([checkpoints] if isinstance(checkpoints, (str, Path)) else checkpoints)]
        if not paths:
            raise ValueError("an ensemble needs at least one member: give `checkpoints: [a.ckpt, b.ckpt, ...]` "
                             "(e.g. the best.ckpt of each run).")
        files = [load_checkpoint_file(path, what=f"ensemble member {path!r}") for path in paths]
        classes = [member_classes(f) for f in files]
        if len(set(classes)) > 1:
            listed = ", ".join(f"{p!r}: {c}" for p, c in zip(paths, classes))
            raise ValueError(f"the ensemble's members classify different numbers of classes ({listed}): averaging "
                             f"needs members trained on the same classes; leave out the ones of other data.")
        if classes[0] is not None and classes[0] != num_classes:
            raise ValueError(f"the ensemble's members classify {classes[0]} classes, but the data has "
                             f"num_classes={num_classes}: use members trained on this data.")
        self.paths = paths  # read by FrozenTeacher, which pins a teacher's files by content
        self.members = nn.ModuleList()
        for path, file in zip(paths, files):
            # a network the member's file names resolves to trusted constructors only (lightning_kd.trust)
            with reading(None if network is not None else f"ensemble member {path!r}"):
                net = build_network(member_network(file, path, network), num_classes, in_channels)
            load_network_weights(net, path, what=f"ensemble member {path!r}")
            self.members.append(net)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = torch.stack([member(x).float().log_softmax(1) for member in self.members])
        return torch.logsumexp(log_probs, 0) - math.log(len(self.members))
