"""Building a network from its spec: the names of :data:`MODELS`, a trusted dotted path, or a dict
with constructor arguments (:func:`build_network`); published-weight specs and their heads.

Its own module so that :mod:`lightning_kd.models.ensemble` (which builds its members) and the package
``__init__`` both import it without importing each other.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from torch import nn

from lightning_kd.trust import check_arguments, check_constructor, check_name

from .inputs import build_published, replicate_grey
from .mobilenetv2 import mobilenetv2
from .resnet import ResNet50, resnet8x4, resnet20, resnet32, resnet32x4, resnet56, resnet110
from .shufflenet import shufflenet_v1, shufflenet_v2
from .small_cnn import small_cnn
from .vgg import vgg8, vgg13
from .wrn import wrn_16_2, wrn_40_1, wrn_40_2

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
    "ResNet50": ResNet50,
    "wrn_16_2": wrn_16_2,
    "wrn_40_1": wrn_40_1,
    "wrn_40_2": wrn_40_2,
    "vgg8": vgg8,
    "vgg13": vgg13,
    "MobileNetV2": mobilenetv2,
    "ShuffleNetV1": shufflenet_v1,
    "ShuffleNetV2": shufflenet_v2,
    "small_cnn": small_cnn,
}


def _import_callable(path: str) -> Callable[..., Any]:
    check_name(path)  # a network named in a file: refused before its module is imported (lightning_kd.trust)
    module_name, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Cannot import network {path!r}: {type(err).__name__}: {err}") from err
    if not callable(obj):
        raise ValueError(f"Network {path!r} resolved to a non-callable {type(obj).__name__}")
    check_constructor(path, obj)
    return obj


def _resolve(name: str) -> Callable[..., Any]:
    if name in MODELS:
        return MODELS[name]
    if "." in name:
        return _import_callable(name)
    close = difflib.get_close_matches(name.lower(), list(MODELS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown network {name!r}.{hint} Valid names: {', '.join(MODELS)}; "
        "or give a dotted import path such as 'torchvision.models.resnet18'."
    )


def _accepts_in_channels(fn: Callable[..., Any]) -> bool:
    try:
        param = inspect.signature(fn).parameters.get("in_channels")
    except (TypeError, ValueError):  # signature not introspectable
        return False
    return param is not None and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)


def build_network(spec: str | dict[str, Any], num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a network from a name, a dotted import path or a ``{"name": ..., **kwargs}`` dict.

    Args:
        spec: A key of :data:`MODELS` (e.g. ``"resnet8x4"``), a dotted path to any callable
            returning an ``nn.Module`` (e.g. ``"torchvision.models.resnet18"``), or a dict with
            a ``"name"`` key holding either of those plus extra constructor keyword arguments.
        num_classes: Number of output logits, passed as ``num_classes=``; for a spec with published
            weights (:func:`is_pretrained`) the network is built with its own head, which is replaced
            by a fresh ``nn.Linear`` of ``num_classes`` outputs when the sizes differ.
        in_channels: Number of input channels, passed as ``in_channels=`` only if the
            constructor's signature has that parameter; 1 (greyscale) into a constructor without it
            (torchvision's) is replicated to its 3 channels in front of the network.

    Returns:
        The constructed module.

    Raises:
        ValueError: For an unknown name, an unimportable path, a dict without ``"name"``,
            conflicting ``num_classes``/``in_channels`` in the dict, ``in_channels`` other than 1
            or 3 for a constructor that cannot take it, or published weights neither cached nor downloadable.
        TypeError: If ``spec`` has the wrong type or the constructor does not return a module.
    """
    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(
                "A network spec dict must contain a 'name' key (a name from MODELS or a dotted "
                f"import path), plus optional constructor keyword arguments; got {spec!r}"
            )
        for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if key in kwargs and kwargs.pop(key) != value:
                raise ValueError(f"Network spec {spec!r} sets {key}, which conflicts with {key}={value}")
    elif isinstance(spec, str):
        name, kwargs = spec, {}
    else:
        raise TypeError(f"Network spec must be a str or a dict, got {type(spec).__name__}")

    constructor = _resolve(name)
    check_arguments(name, kwargs)
    replicate = False
    if _accepts_in_channels(constructor):
        kwargs["in_channels"] = in_channels
    elif in_channels == 1:
        replicate = True  # greyscale data into a 3-channel network: the channel is replicated
    elif in_channels != 3:
        raise ValueError(
            f"Network {name!r} has no `in_channels` parameter: it only takes 3-channel input, "
            f"but in_channels={in_channels} was requested: decode the images as RGB (--data.channels 3)."
        )
    if not is_pretrained(kwargs):
        model = constructor(num_classes=num_classes, **kwargs)
    else:  # the published weights fix the head's size: build it so, then fit the head to the data
        model = build_published(constructor, name, kwargs)
        if output_classes(model) != num_classes:
            replace_head(model, num_classes)
            model.new_head = True  # read by FrozenTeacher: a teacher with an untrained head needs teacher_ckpt
    if not isinstance(model, nn.Module):
        raise TypeError(f"Network {name!r} returned {type(model).__name__}, not an nn.Module")
    if replicate:
        replicate_grey(model, name)
    return model


def is_pretrained(spec: str | dict[str, Any]) -> bool:
    """Whether a spec asks for published weights: torchvision's ``weights:`` (not null) or timm's
    ``pretrained: true``. They are read from the local cache (``$TORCH_HOME/hub``, the Hugging Face
    cache); without a network they must be there."""
    return isinstance(spec, dict) and (spec.get("weights") is not None or spec.get("pretrained") is True)


def classifier(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of ``model`` (its classification head), with its dotted name."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to fit to the data's classes.")
    return heads[-1]


def output_classes(model: nn.Module) -> int:
    return classifier(model)[1].out_features


def replace_head(model: nn.Module, num_classes: int) -> None:
    """A fresh ``nn.Linear`` head with ``num_classes`` outputs in place of the last one (fine-tuning)."""
    name, head = classifier(model)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(head.in_features, num_classes, bias=head.bias is not None))
