"""The shape every network of the zoo shares: stem -> layer1..layerK -> pool -> fc."""
from __future__ import annotations

import re
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

# (pattern, replacement) for re.sub on a key: the replacement is a string or a function of the match.
Rename = tuple[str, Union[str, Callable[[re.Match], str]]]


class StagedNet(nn.Module):
    """Base of the zoo's networks, so features can be hooked by the same names everywhere.

    A subclass builds ``self.stem`` and ``self.layer1``..``layerK``, then calls
    :meth:`add_head`, which adds ``pool`` (global average pool + flatten: the ``(N, D)``
    penultimate embedding) and ``fc``, and initialises the convolutions (He, fan-out).

    The CIFAR networks are also those of the CRD code (RepDistiller,
    https://github.com/HobbitLong/RepDistiller, and mdistiller, which has the same modules), which
    published the teachers nearly every paper uses. A subclass lists in ``repdistiller_renames`` how its
    ``state_dict`` keys become theirs (``re.sub`` applied in order to each key), so their checkpoint
    files load into it and it can be written in their format: :meth:`repdistiller_names`.
    """

    stage_names: list[str]
    embedding_dim: int
    repdistiller_renames: tuple[Rename, ...] = ()

    def add_head(self, stage_names: list[str], channels: int, num_classes: int,
                 neck: Optional[nn.Module] = None, pooled_channels: Optional[int] = None) -> None:
        """``pool`` and ``fc`` after the stages. ``neck`` (e.g. the 1x1 conv-BN-ReLU that widens
        MobileNetV2's and ShuffleNetV2's last stage to ``pooled_channels``) runs inside ``pool``, before
        the average, so ``pool`` still outputs the embedding that ``fc`` reads."""
        self.stage_names = list(stage_names)
        self.embedding_dim = pooled_channels or channels
        layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.pool = nn.Sequential(*([neck] if neck is not None else []), *layers)
        self.fc = nn.Linear(self.embedding_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x))

    def repdistiller_names(self) -> dict[str, str]:
        """Each ``state_dict`` key -> its name in the CRD code's network (RepDistiller / mdistiller).

        Raises:
            NotImplementedError: For a network the CRD code does not have.
        """
        if not self.repdistiller_renames:
            raise NotImplementedError(f"{type(self).__name__} is not a network of the CRD code (RepDistiller, "
                                      f"mdistiller): it has no RepDistiller naming.")
        names = {}
        for key in self.state_dict():
            theirs = key
            for pattern, replacement in self.repdistiller_renames:
                theirs = re.sub(pattern, replacement, theirs)
            names[key] = theirs
        return names

    def repdistiller_state_dict(self) -> dict[str, Tensor]:
        """The ``state_dict`` under the CRD code's names: what their ``model.state_dict()`` holds."""
        names = self.repdistiller_names()
        return {names[k]: v.detach().cpu().clone() for k, v in self.state_dict().items()}
