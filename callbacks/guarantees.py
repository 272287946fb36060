"""Guarantees: the callbacks every method adds (README, "Guarantees"), run as one callback. Lightning calls each
of a step's half-dozen hooks on every callback (about 15 Python calls each, whether the callback uses the hook
or not); one callback instead of five saves about 350 calls a step."""
from __future__ import annotations

from pytorch_lightning.callbacks import Callback

from lightning_kd.callbacks.finite import FiniteCheck
from lightning_kd.callbacks.resume import ResumeCheck
from lightning_kd.callbacks.rng import RNGState
from lightning_kd.callbacks.run_folder import OneRunPerFolder
from lightning_kd.callbacks.safe_checkpoints import SafeCheckpoints

#: Every hook Lightning calls on a callback.
HOOKS = tuple(name for name, value in vars(Callback).items()
              if callable(value) and (name.startswith("on_") or name in ("setup", "teardown")))


class Guarantees(Callback):
    """``FiniteCheck`` (the module's own: its interval is checked when the module is built), ``RNGState``,
    ``SafeCheckpoints``, ``ResumeCheck`` and ``OneRunPerFolder``: each hook is passed, in that order (the order of
    the five callbacks it replaces), to the parts that define it. Its state in a checkpoint is RNGState's, under
    RNGState's key, as before."""

    state_key = RNGState.__qualname__  # Callback.state_key of RNGState: its checkpoints' key

    def __init__(self, finite_check: FiniteCheck):
        self.rng = RNGState()
        self.parts = (finite_check, self.rng, SafeCheckpoints(), ResumeCheck(), OneRunPerFolder())
        #: By hook, the parts' methods that act on it.
        self.acting = {hook: [getattr(part, hook) for part in self.parts if getattr(type(part), hook) is not
                              getattr(Callback, hook)] for hook in HOOKS}

    def state_dict(self) -> dict:
        return self.rng.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.rng.load_state_dict(state_dict)


def passed_to_parts(hook: str):
    def method(self, *args, **kwargs) -> None:
        for act in self.acting[hook]:
            act(*args, **kwargs)
    method.__name__ = method.__qualname__ = hook
    return method


for _hook in HOOKS:
    setattr(Guarantees, _hook, passed_to_parts(_hook))
