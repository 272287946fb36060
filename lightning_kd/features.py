"""Intermediate features of any network by module name, with forward hooks, and the layer helpers
of the feature methods.

No model rewrites: any torchvision/timm/own network works, the layers are named in YAML.
"""
from __future__ import annotations

import difflib
from typing import Literal, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn


class NetOutput(NamedTuple):
    """One forward pass of a network: its logits and the features of the layers that were asked for."""

    logits: Tensor
    features: dict[str, Tensor]


def detached(output: NetOutput) -> NetOutput:
    """``output`` with its logits and features detached from the graph."""
    return NetOutput(output.logits.detach(), {k: v.detach() for k, v in output.features.items()})


def resolve_modules(model: nn.Module, names: Sequence[str], what: str = "layer") -> list[nn.Module]:
    """Return the submodules called ``names``; an unknown name raises with the closest valid ones."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            valid = [n for n in modules if n]
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
            hint = f"closest valid names: {close}" if close else f"valid names include: {valid[:20]}"
            raise ValueError(
                f"unknown {what} name {name!r} in {type(model).__name__}; {hint}. "
                f"Use a dotted name from model.named_modules()."
            )
        found.append(modules[name])
    return found


#: A layer name ending in it records a copy of the module's first input instead of its output: the
#: pre-activation of a stage whose last module is an (in-place) ReLU, e.g. ``layer1.4.relu:input``.
INPUT_SUFFIX = ":input"


class FeatureHooks:
    """Record the output (or first input) of named submodules on every forward pass.

    Example:
        >>> hooks = FeatureHooks(net, ["layer1", "layer2"])
        >>> logits = net(x)
        >>> features = hooks.pop()   # {"layer1": ..., "layer2": ...}; the store is empty again

    Args:
        model: the network to observe.
        names: dotted module names, as in ``model.named_modules()``.
        capture: ``"output"`` (default) or ``"input"`` (the first positional input).

    A name ending in ``:input`` (:data:`INPUT_SUFFIX`) records a copy of that module's first input, taken
    before the module runs (an in-place ReLU would overwrite the input itself): a stage's pre-activation.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], capture: Literal["output", "input"] = "output"):
        if capture not in ("output", "input"):
            raise ValueError(f"capture must be 'output' or 'input', got {capture!r}")
        self.names = list(dict.fromkeys(names))
        self._store: dict[str, Tensor] = {}
        self._handles = []
        modules = resolve_modules(model, [n.removesuffix(INPUT_SUFFIX) for n in self.names])
        for name, module in zip(self.names, modules):
            if name.endswith(INPUT_SUFFIX):
                self._handles.append(module.register_forward_pre_hook(self._input_copy(name)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(name, capture)))

    def _input_copy(self, name: str):
        def hook(module, inputs):
            self._store[name] = inputs[0].clone()
        return hook

    def _hook(self, name: str, capture: str):
        def hook(module, inputs, output):
            self._store[name] = inputs[0] if capture == "input" else output
        return hook

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward pass by name; the store is cleared, so a recorded feature
        (and the graph it holds) never outlives the step that read it."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            self._store.clear()
            raise RuntimeError(f"no features recorded for {missing}: run a forward pass first "
                               f"(or the module is not used in forward)")
        features = dict(self._store)  # a copy, then the store emptied in place: in a compiled step (capture_step)
        self._store.clear()  # the store leaves the graph empty, not holding the step's features
        return features

    def remove(self) -> None:
        """Detach the hooks; the model is left exactly as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()


@torch.no_grad()
def example_features(net: nn.Module, hooks: FeatureHooks, x: Tensor) -> dict[str, Tensor]:
    """The features ``hooks`` record on one forward of ``x``, in eval mode (BatchNorm statistics stay
    as they are; the mode is restored afterwards). Methods size their adapters with them."""
    was_training = net.training
    net.eval()
    try:
        net(x)
        return hooks.pop()
    finally:
        net.train(was_training)


def layer_names(net: nn.Module, names: Optional[Sequence[str]], arg: str, default_prefix: tuple = ()) -> list[str]:
    """``names`` if given, else ``default_prefix + net.stage_names`` (error if the net has none)."""
    if names is not None:
        return list(names)
    if not hasattr(net, "stage_names"):
        raise ValueError(f"{type(net).__name__} has no `stage_names`: set `{arg}` to the dotted "
                         f"names of the layers to use (see model.named_modules()).")
    return [*default_prefix, *net.stage_names]


def preactivation(net: nn.Module, stage: str) -> str:
    """The layer name of ``stage``'s pre-activation: ``<stage>.<last block>.relu:input`` when the stage's last
    block ends in a ReLU named ``relu`` (the residual networks of :mod:`lightning_kd.models`), else ``stage``."""
    module = dict(net.named_modules())[stage]
    blocks = list(module.named_children())
    if blocks and isinstance(getattr(blocks[-1][1], "relu", None), nn.ReLU):
        return f"{stage}.{blocks[-1][0]}.relu{INPUT_SUFFIX}"
    return stage


def paired_layers(student_layers: Sequence[str], teacher_layers: Sequence[str], method: str) -> None:
    """Raise unless the student and teacher layer lists pair up one to one."""
    if len(student_layers) != len(teacher_layers) or not student_layers:
        raise ValueError(f"{method} pairs student and teacher layers one to one, but got "
                         f"{len(student_layers)} student_layers {list(student_layers)} and "
                         f"{len(teacher_layers)} teacher_layers {list(teacher_layers)}: give lists of "
                         f"the same, non-zero length.")


def check_4d(features: dict[str, Tensor], who: str) -> None:
    """Raise unless every feature is an ``(N, C, H, W)`` map."""
    for name, feat in features.items():
        if feat.dim() != 4:
            raise ValueError(f"{who} layer {name!r} outputs shape {tuple(feat.shape)}; feature "
                             f"methods need (N, C, H, W) maps: pick a convolutional stage.")
