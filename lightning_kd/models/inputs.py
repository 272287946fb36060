"""What a network is fed beyond its constructor: greyscale data replicated into a 3-channel network, and
published weights read from the local cache (one clear line when they are not there and cannot be
downloaded)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

_SAID: set[str] = set()


def grey_to_rgb(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: a 1-channel batch repeated into the 3 channels the network takes."""
    return (args[0].expand(-1, 3, -1, -1), *args[1:])


def replicate_grey(model: nn.Module, name: str) -> None:
    """Feed ``model`` (3-channel input only) greyscale batches: the channel is replicated in front of it
    (a forward pre-hook, so its weights and keys are unchanged); said once per network name."""
    model.register_forward_pre_hook(grey_to_rgb)
    model.replicates_grey = True  # read by the export (lightning_kd.export)
    if name not in _SAID:
        _SAID.add(name)
        rank_zero_info(f"{name} takes 3-channel input: the data's single (greyscale) channel is replicated to 3 "
                       f"in front of it (--data.channels 3 decodes the images as RGB instead).")


def weights_file(constructor: Callable[..., Any], weights: Any) -> tuple[str, str]:
    """(file name, URL) of torchvision weights ``weights`` of ``constructor``; ('', '') when unknown."""
    try:
        from torchvision.models import get_model_weights

        entry = get_model_weights(constructor)[weights] if isinstance(weights, str) else weights
        return Path(entry.url).name, entry.url
    except Exception:  # noqa: BLE001 - not torchvision's: the message names the cache folder only
        return "", ""


def build_published(constructor: Callable[..., Any], name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``constructor(**kwargs)`` with published weights; an offline machine without the file in the cache
    gets one line naming the file, the cache folder and ``weights: null``."""
    try:
        return constructor(**kwargs)
    except OSError as err:  # urllib's URLError, a refused connection, a read-only cache
        file, url = weights_file(constructor, kwargs.get("weights"))
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        what = f"{file} (from {url})" if file else "the weights file"
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        asked = {k: v for k, v in kwargs.items() if k in ("weights", "pretrained")}
        raise ValueError(f"the published weights of {name} {asked} are not in the local cache and could not be "
                         f"downloaded ({reason}): put {what} into {folder} ($TORCH_HOME/hub/checkpoints; timm's "
                         f"go to the Hugging Face cache), or train from scratch with weights: null.") from None
