"""Checkpoint files: safe and strict reading of network weights in the common formats, atomic writing.

Every file goes through ``torch.load(weights_only=True)``: a checkpoint that would run code when
unpickled is refused, never executed. A file that is not a checkpoint is reported as what it is.
Network weights are found in a Lightning ``.ckpt`` (ours keep the network under ``student.``), a
plain state_dict, or the wrappers of the KD repositories (``{"state_dict": ...}``, ``{"model":
...}``, ``{"net": ...}``, ``{"module": ...}``), with the ``module.`` (DDP) and ``_orig_mod.``
(``torch.compile``) prefixes in any combination; keys must then match the network exactly, under
its own names or, for a network of the CRD code, under that code's (RepDistiller's and mdistiller's
``{"model": state_dict, ...}`` files: :meth:`~lightning_kd.models.staged.StagedNet.repdistiller_names`).
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

WRAPPERS = ("state_dict", "model", "net", "module")  # dict keys that hold a state_dict
NETWORK_PREFIXES = ("student.", "model.", "net.")  # a Lightning module's network attribute
PICKLE_PROTOCOL = b"\x80"  # torch's legacy (non-zip) format starts with a pickle protocol opcode
ZIP_MAGIC = b"PK\x03\x04"
FILE_KINDS = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
              b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip archive"}


class UnsafeCheckpointError(RuntimeError):
    """The file holds objects other than tensors and plain containers, so it was not loaded."""


def file_kind(head: bytes) -> str:
    """What a file that torch did not write is, from its first bytes."""
    for magic, kind in FILE_KINDS.items():
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not a file torch.save wrote (it starts with the bytes {head[:8]!r})"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    if re.match(r"^[\w.\-]+:(\s|$)", first):
        return f"a YAML/text file (it starts with {first!r}), perhaps a config rather than a checkpoint"
    return f"a text file (it starts with {first!r})"


def load_checkpoint_file(path: str | Path, what: str = "checkpoint") -> dict:
    """Load a checkpoint dictionary with ``weights_only=True`` and turn failures into clear errors."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt")) + sorted(p.name for p in path.glob("*.pt"))
        raise IsADirectoryError(f"{what} {str(path)!r} is a folder, not a checkpoint file: name a file in it"
                                + (f" (it holds {found[:4]})." if found else " (it holds no .ckpt or .pt file)."))
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist. Point it at a Lightning .ckpt "
                                f"(e.g. <checkpoint.dirpath>/best.ckpt from a Supervised run) or a "
                                f"state_dict saved with torch.save(model.state_dict(), path).")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes): the save was interrupted; "
                         f"use another checkpoint, e.g. last.ckpt, or retrain.")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTOCOL)):
        raise ValueError(f"{what} {str(path)!r} is {file_kind(head)}, not a checkpoint: point it at a file "
                         f"written by torch.save (a Lightning .ckpt or a state_dict .pt/.pth).")
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


def normalized_key(key: str) -> str:
    """A parameter name without ``torch.compile``'s ``_orig_mod.`` and DDP's leading ``module.``."""
    key = key.replace("_orig_mod.", "")
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def unwrap(obj: dict) -> dict[str, Any]:
    """The state_dict inside the wrappers of Lightning and the KD repositories, keys normalized."""
    while True:
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None or all(isinstance(v, Tensor) for v in obj.values()):
            break
        obj = inner
    return {normalized_key(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def network_candidates(state: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The state itself and its sub-dicts under a Lightning module's network prefixes."""
    candidates = [state]
    for prefix in NETWORK_PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            candidates.append(inner)
    return candidates


def read_weights(path: str | Path, expected: dict[str, Tensor], what: str = "checkpoint",
                 network: str = "the network", repdistiller: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The weights in ``path`` for the ``network`` whose ``state_dict()`` is ``expected``; any missing or
    unexpected key, or any shape that differs, raises an error that names them and the likely cause.
    ``repdistiller`` (each key of ``expected`` -> its name in the CRD code) also reads that code's files,
    and errors about such a file name its keys as that code does."""
    candidates = network_candidates(unwrap(load_checkpoint_file(path, what)))
    ours = {theirs: key for key, theirs in (repdistiller or {}).items()}
    translated = [{ours.get(k, k): v for k, v in c.items()} for c in candidates] if repdistiller else []
    wanted = set(expected)
    state = next((c for c in candidates + translated if set(c) == wanted),
                 max(candidates + translated, key=lambda c: (len(wanted & set(c)), -len(set(c) - wanted))))
    in_their_names = any(state is c for c in translated)
    name = (lambda k: repdistiller[k]) if in_their_names else (lambda k: k)
    missing, unexpected = sorted(name(k) for k in wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        if not missing:
            cause = ("a bigger network of the same family (e.g. a deeper or wider one: resnet32x4 weights for "
                     "resnet8x4)?")
        elif not unexpected:
            cause = "a smaller network of the same family (e.g. a shallower one)?"
        else:
            cause = "another architecture?"
        parts = [f"{len(missing)} of its {len(expected)} tensors are missing (e.g. {missing[:3]})" if missing else "",
                 f"{len(unexpected)} tensors are not in it (e.g. {unexpected[:3]})" if unexpected else ""]
        naming = " (a file of the CRD code, RepDistiller/mdistiller, named as there)" if in_their_names else ""
        raise ValueError(f"{what} {str(path)!r}{naming} does not fit {network}: " + "; ".join(p for p in parts if p)
                         + f". Is it a checkpoint of {cause} Check the network spec against the checkpoint.")
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
            f"{len(wrong)} tensors, e.g. " + "; ".join(f"{name(k)}: file {a} vs model {b}" for k, a, b in wrong[:3])
            + ". Is it a checkpoint of another architecture or width?")
    diverged = [name(k) for k in expected if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if diverged:
        raise ValueError(f"{what} {str(path)!r} holds NaN/Inf in {len(diverged)} of its {len(expected)} tensors (e.g. "
                         f"{diverged[:3]}): it is the file of a run that diverged; give a checkpoint of a run that "
                         f"trained well.")
    return {k: state[k] for k in expected}


def repdistiller_names(net: nn.Module) -> dict[str, str] | None:
    """``net``'s keys -> their names in the CRD code, for a network that has them (else None)."""
    return net.repdistiller_names() if getattr(net, "repdistiller_renames", None) else None


def load_network_weights(net: nn.Module, path: str | Path, what: str = "checkpoint") -> None:
    """Load weights into ``net`` from ``path``; any mismatch raises an error that names it."""
    net.load_state_dict(read_weights(path, net.state_dict(), what, type(net).__name__, repdistiller_names(net)))


def save_repdistiller(net: nn.Module, path: str | Path) -> None:
    """Write ``net`` as the CRD code writes its checkpoints, ``{"model": state_dict}`` under that code's
    names, so RepDistiller's and mdistiller's scripts load it (e.g. mdistiller's ``tools/eval.py -m
    resnet8x4 -c PATH``)."""
    names = repdistiller_names(net)
    if names is None:
        raise ValueError(f"{type(net).__name__} is not a network of the CRD code (RepDistiller, mdistiller): "
                         f"there is no RepDistiller format to write it in; export its own state_dict instead.")
    atomic_save({"model": net.repdistiller_state_dict()}, path)


def classifier_key(state: dict[str, Tensor]) -> str | None:
    """The weight of the classification head: the last 2-D weight of a state_dict (a Linear layer)."""
    matrices = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return matrices[-1] if matrices else None


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file at ``path``, on any filesystem: the data goes to a
    temporary file in the destination folder, is flushed to disk, then renamed over ``path`` (an atomic
    rename within one filesystem). A kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is shared like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed over an hour ago
        try:  # (a younger one may be another process's write in progress)
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except FileNotFoundError:
            pass
    try:  # the rename itself reaches the disk with the folder's entry
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading with ``weights_only=True`` whatever the caller asks for (with
    :func:`load_checkpoint_file`'s clear errors) and writing atomically on any filesystem
    (:func:`atomic_save`; Lightning's own writer stages the file in ``$TMPDIR`` and moves it, which is a
    copy, not an atomic rename, when the checkpoint folder is on another filesystem)."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if "://" in str(path):  # remote (fsspec) paths: Lightning's reader, still weights_only
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, what="ckpt_path")

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)
