"""What a method sees of a batch, and what it may ask of the training data.

A training batch reaches ``distill_losses(student, teacher, batch)`` as a :class:`Batch`: the images, the
labels and, when the data gives them, the samples' indices in the training set. A method lists in
``data_needs`` what it needs beyond that (:data:`DATA_NEEDS`); :func:`check_data_needs` refuses, before
training, data that cannot give it, and turns the indices on where the datamodule can give them.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

from torch import Tensor

#: What a method may need of the training data: the samples' indices in every training batch, the
#: training set's size and its labels (in index order).
DATA_NEEDS = ("index", "train_size", "train_labels")


class Batch(NamedTuple):
    """A training or evaluation batch: ``x`` (normalized images), ``y`` (labels) and ``index`` (the samples'
    indices in the training set; None where the method asked for none)."""

    x: Tensor
    y: Tensor
    index: Optional[Tensor] = None


def check_data_needs(method: str, needs: Sequence[str], datamodule, hints: Optional[dict[str, str]] = None) -> None:
    """Refuse, with the fix, a ``datamodule`` that cannot give what ``method`` needs; switch its training
    batches' indices on (``return_index``) when the method needs them. Call after the datamodule's setup.
    ``hints``: by need, the method's own way to do without it (e.g. an option that needs no labels)."""
    unknown = sorted(set(needs) - set(DATA_NEEDS))
    if unknown:
        raise ValueError(f"{method} declares data_needs {unknown}; what a method may need is {list(DATA_NEEDS)}.")
    if not needs:
        return
    if datamodule is None:
        raise ValueError(f"{method} needs the training data's {list(needs)}: pass a lightning_kd datamodule to the "
                         f"Trainer (trainer.fit(model, datamodule=...)), not bare dataloaders.")
    name = type(datamodule).__name__
    if "index" in needs:
        if not hasattr(datamodule, "return_index"):
            raise ValueError(f"{method} needs the samples' indices in every training batch, and {name} cannot "
                             f"give them: use a lightning_kd datamodule, or give {name} a `return_index` "
                             f"attribute that makes its training batches (x, y, index).")
        datamodule.return_index = True
    for need in ("train_size", "train_labels"):
        if need in needs and getattr(datamodule, need, None) is None:
            hint = (hints or {}).get(need)
            raise ValueError(f"{method} needs the training set's {need.replace('train_', '')}, and {name} does not "
                             f"give it (its `{need}` is missing or None): use data that has it"
                             f"{f', or {hint}' if hint else ''}.")
