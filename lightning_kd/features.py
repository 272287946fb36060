"""Capture intermediate features of any network by module name, with forward hooks.

No model rewrites: any torchvision/timm/own network works, the layers are named in YAML.
"""
from __future__ import annotations

import difflib
from typing import Literal

from torch import Tensor, nn


def resolve_modules(model: nn.Module, names: list[str], what: str = "layer") -> list[nn.Module]:
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


class FeatureHooks:
    """Record the output (or first input) of named submodules on every forward pass.

    Example:
        >>> hooks = FeatureHooks(net, ["layer1", "layer2"])
        >>> logits = net(x)
        >>> f1, f2 = hooks.features   # in the order of the names

    Args:
        model: the network to observe.
        names: dotted module names, as in ``model.named_modules()``.
        capture: ``"output"`` (default) or ``"input"`` (the first positional input).
    """

    def __init__(self, model: nn.Module, names: list[str], capture: Literal["output", "input"] = "output"):
        if capture not in ("output", "input"):
            raise ValueError(f"capture must be 'output' or 'input', got {capture!r}")
        self.names = list(names)
        self._store: dict[str, Tensor] = {}
        self._handles = []
        for name, module in zip(self.names, resolve_modules(model, self.names)):
            self._handles.append(module.register_forward_hook(self._hook(name, capture)))

    def _hook(self, name: str, capture: str):
        def hook(module, inputs, output):
            self._store[name] = inputs[0] if capture == "input" else output
        return hook

    @property
    def features(self) -> list[Tensor]:
        """Features of the last forward pass, in the order of ``names``."""
        missing = [n for n in self.names if n not in self._store]
        if missing:
            raise RuntimeError(f"no features recorded for {missing}: run a forward pass first "
                               f"(or the module is not used in forward)")
        return [self._store[n] for n in self.names]

    def clear(self) -> None:
        self._store.clear()

    def remove(self) -> None:
        """Detach the hooks; the model is left exactly as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()
