"""Safe weight loading: Lightning ``.ckpt``, ``.pt`` files and plain state_dicts.

Every file goes through ``torch.load(weights_only=True)``: a checkpoint that would run code
when unpickled is refused, never executed.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

# Prefixes under which a network's weights sit in the checkpoints we know:
# our own modules ("student."), DDP ("module."), common wrappers ("model.", "net.").
KNOWN_PREFIXES = ("student.", "model.", "module.", "net.")


class UnsafeCheckpointError(RuntimeError):
    """The file holds objects other than tensors and plain containers, so it was not loaded."""


def load_checkpoint_file(path: str | Path, what: str = "checkpoint") -> dict:
    """Load a checkpoint dictionary with ``weights_only=True`` and turn failures into clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist. Point it at a Lightning .ckpt "
                                f"(e.g. <checkpoint.dirpath>/best.ckpt from a Supervised run) or a "
                                f"state_dict saved with torch.save(model.state_dict(), path).")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes): the save was interrupted; "
                         f"use another checkpoint, e.g. last.ckpt, or retrain.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {what} {str(path)!r}: it contains Python objects other than tensors, "
            f"and unpickling them could run arbitrary code. Only load files you trust; if you do "
            f"trust it, re-save its state_dict with torch.save(model.state_dict(), path). "
            f"(torch said: {str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{what} {str(path)!r} is corrupt or truncated and cannot be read "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         f"use another checkpoint or retrain.") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {str(path)!r} holds a {type(obj).__name__}, not a state_dict or "
                         f"a Lightning checkpoint dictionary.")
    return obj


def extract_state_dict(obj: dict, expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Find the weights of a network with the ``expected`` keys in a checkpoint dict (Lightning or plain)."""
    state = obj.get("state_dict", obj)
    wanted = set(expected)
    if wanted <= set(state):
        return {k: state[k] for k in wanted}
    for prefix in KNOWN_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and wanted <= set(stripped):
            return stripped
    # Nothing matches completely: return the best-matching candidate so the caller can report it.
    candidates = [state] + [{k[len(p):]: v for k, v in state.items() if k.startswith(p)} for p in KNOWN_PREFIXES]
    return max(candidates, key=lambda c: len(wanted & set(c)))


def read_weights(path: str | Path, expected: dict[str, Tensor], what: str = "checkpoint",
                 network: str = "the network") -> dict[str, Tensor]:
    """The weights in ``path`` for the ``network`` whose ``state_dict()`` is ``expected``; any mismatch
    of keys or shapes raises an error that names it."""
    state = extract_state_dict(load_checkpoint_file(path, what), expected)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(
            f"{what} {str(path)!r} does not fit {network}: {len(missing)} of its "
            f"{len(expected)} tensors are missing (e.g. {missing[:3]}). Is it a checkpoint of "
            f"another architecture? Check the network spec against the checkpoint.")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        head = classifier_key(expected)
        if head in {k for k, _, _ in wrong} and state[head].shape[0] != expected[head].shape[0]:
            raise ValueError(
                f"{what} {str(path)!r} has a classifier with {state[head].shape[0]} outputs, but the data "
                f"has num_classes={expected[head].shape[0]}. Use a teacher trained on this dataset.")
        raise ValueError(
            f"{what} {str(path)!r} does not fit {network}: shape mismatch in "
            f"{len(wrong)} tensors, e.g. " + "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:3])
            + ". Is it a checkpoint of another architecture or width?")
    return {k: state[k] for k in expected}


def load_network_weights(net: nn.Module, path: str | Path, what: str = "checkpoint") -> None:
    """Load weights into ``net`` from ``path``; any mismatch raises an error that names it."""
    net.load_state_dict(read_weights(path, net.state_dict(), what, type(net).__name__))


def classifier_key(state: dict[str, Tensor]) -> str | None:
    """The weight of the classification head: the last 2-D weight of a state_dict (a Linear layer)."""
    matrices = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return matrices[-1] if matrices else None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but resuming (``fit(ckpt_path=...)``) never unpickles code.

    Lightning passes ``weights_only=None`` to ``torch.load`` by default, which means "unsafe"
    on torch < 2.6 and under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``. Here every local file goes
    through :func:`load_checkpoint_file` (``weights_only=True``, clear errors for missing,
    empty, truncated and unsafe files) whatever the caller asked for.
    """

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if "://" in str(path):  # remote (fsspec) paths: Lightning's reader, still weights_only
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, what="ckpt_path")
