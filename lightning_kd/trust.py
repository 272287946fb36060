"""Nothing named in a file runs code.

A checkpoint's hyper-parameters and an ensemble member's checkpoint name networks and classes. Built as
they stand, a name such as ``logging.basicConfig`` or ``torch.hub.load`` with its arguments would run
whatever the file's author wished, although the file itself loads with ``weights_only=True``. So a
network named in a file (:func:`reading` says which file is being read) resolves only to

- the library's networks (the names of :data:`lightning_kd.models.MODELS` and the network classes that
  :mod:`lightning_kd.models` exports) and the model constructors registered by torchvision and timm, or
- a name the user gave (:func:`named_by_user`): on the command line or in a config of ``lightning-kd``,
  or as an argument in Python (``Method.load_from_checkpoint(path, student=...)``, the ``network`` of
  a :class:`~lightning_kd.models.CheckpointEnsemble`).

Anything else is refused before its module is imported; so are the timm arguments that load another
file or address (``checkpoint_path``, ``pretrained_cfg``, ``pretrained_cfg_overlay``, a ``model_name``
with a ``hf-hub:``-like prefix). Every other class path in a checkpoint (:func:`check_class_paths`):
the method it records must be a class already imported (nothing is imported to find it), and a class
path or callable in its hyper-parameters (which Lightning and jsonargparse would import) must be one
the user named: a checkpoint of the library holds none (optimizer and scheduler are not saved). The
method a checkpoint records for the resume checks is only compared, never imported.
"""
from __future__ import annotations

import contextlib
import sys
import typing
from contextvars import ContextVar
from typing import Any, Iterator, Optional

_source: ContextVar[Optional[str]] = ContextVar("lightning_kd_spec_source", default=None)
_named: ContextVar[frozenset] = ContextVar("lightning_kd_named", default=frozenset())

TRUSTED_PACKAGES = ("lightning_kd.models.", "torchvision.models.", "timm.")
# Network arguments that make timm load another file or address (a pickle, a hub repository).
LOADING_ARGUMENTS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay")
# Lightning's own instantiator, the one a checkpoint may name (Lightning refuses any other).
INSTANTIATORS = ("pytorch_lightning.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module")


class UntrustedNameError(ValueError):
    """A network or class named in a file that is neither the library's, torchvision's or timm's, nor one
    the user named."""


def strings(value: Any) -> set[str]:
    """Every string in a nested structure of dicts, lists, tuples and jsonargparse Namespaces."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set)):
        return set().union(*(strings(v) for v in value))
    return set()


@contextlib.contextmanager
def named_by_user(*values: Any) -> Iterator[None]:
    """Inside, every string in ``values`` counts as named by the user (added to those named outside)."""
    token = _named.set(_named.get() | strings(values))
    try:
        yield
    finally:
        _named.reset(token)


@contextlib.contextmanager
def reading(source: Optional[str]) -> Iterator[None]:
    """Inside, networks are built from what ``source`` (a file, as errors name it) names; None: no change."""
    if source is None:
        yield
        return
    token = _source.set(source)
    try:
        yield
    finally:
        _source.reset(token)


def from_file(value: str) -> Optional[str]:
    """The file being read, when ``value`` comes from it and the user did not name it; else None."""
    source = _source.get()
    return None if source is None or value in _named.get() else source


def refuse(source: str, what: str, fix: str) -> None:
    raise UntrustedNameError(
        f"{source} names {what}: a name read from a file is never imported, as building it could run any "
        f"code (the library's networks and torchvision's and timm's model constructors are trusted). If you "
        f"trust it, name it yourself: {fix}.")


HOW_TO_NAME = ("give the same spec in your config or on the command line (e.g. --model.init_args.student), "
               "as an argument of load_from_checkpoint(path, student=...), or as an ensemble's `network`")


def check_name(name: str) -> None:
    """Before a network's dotted path is imported: refuse it when a file names it outside the trusted packages."""
    source = from_file(name)
    if source is not None and not name.startswith(TRUSTED_PACKAGES):
        refuse(source, f"the network {name!r}", HOW_TO_NAME)


def check_constructor(name: str, obj: Any) -> None:
    """After import: a network a file names in a trusted package must be one of its model constructors."""
    source = from_file(name)
    if source is not None and not is_model_constructor(obj):
        refuse(source, f"{name!r}, which is not a network constructor", HOW_TO_NAME)


def check_arguments(name: str, kwargs: dict) -> None:
    """A network spec from a file may not make its constructor load another file or address."""
    for key, value in kwargs.items():
        loads = key in LOADING_ARGUMENTS or (key == "model_name" and isinstance(value, str) and ":" in value)
        source = from_file(str(value)) if loads and value is not None else None
        if source is not None:
            refuse(source, f"the network {name!r} with {key}={value!r}, which loads another file or address",
                   HOW_TO_NAME)


def is_model_constructor(obj: Any) -> bool:
    """Whether ``obj`` is a network of :mod:`lightning_kd.models` (a constructor of ``MODELS``, a module class
    defined there) or a model constructor torchvision or timm registers (only modules already imported are
    asked)."""
    from torch import nn

    models = sys.modules.get("lightning_kd.models")  # imported already: it asks; importing it here is a circle
    if (models is not None and obj in models.MODELS.values()) or (isinstance(obj, type) and issubclass(obj, nn.Module)
                                         and obj.__module__.startswith("lightning_kd.models")):
        return True
    torchvision = sys.modules.get("torchvision.models")
    if torchvision is not None and obj in {torchvision.get_model_builder(n) for n in torchvision.list_models()}:
        return True
    timm = sys.modules.get("timm")
    name = getattr(obj, "__name__", "")
    return timm is not None and (obj is timm.create_model or (
        timm.is_model(name) and timm.models.model_entrypoint(name) is obj))


def already_imported(path: str) -> Any:
    """The object a dotted path names, read from modules already imported (``sys.modules``): nothing is
    imported, so nothing runs. None if its module is not imported or has no such attribute."""
    module, attrs = path, []
    while module and module not in sys.modules:
        module, _, attr = module.rpartition(".")
        attrs.insert(0, attr)
    obj = sys.modules.get(module) if module else None
    for attr in attrs:
        obj = getattr(obj, attr, None)
    return obj


def callable_parameters(cls: type) -> set[str]:
    """The constructor parameters of ``cls`` (its bases' included) that take a callable or a class: those
    whose string value jsonargparse imports."""
    names = set()
    for klass in getattr(cls, "__mro__", ()):
        init = vars(klass).get("__init__")
        try:
            hints = typing.get_type_hints(init) if init is not None else {}
        except Exception:  # noqa: BLE001 - an annotation that does not resolve here is not a callable's
            hints = {}
        names |= {k for k, hint in hints.items() if "Callable" in repr(hint) or "Type[" in repr(hint)
                  or "type[" in repr(hint)}
    return names


def class_paths(hparams: dict, method: Optional[type]) -> list[tuple[str, str]]:
    """``(key, dotted path)`` of every class path a checkpoint's hyper-parameters hold besides its method:
    ``class_path`` entries at any depth and strings given to callable parameters of ``method``."""
    found = []

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("class_path"), str):
                found.append((key, value["class_path"]))
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    callables = callable_parameters(method) if method is not None else set()
    for key, value in hparams.items():
        if key in ("_class_path", "_instantiator"):
            continue
        if key in callables and isinstance(value, str):
            found.append((key, value))
        walk(value, key)
    return found


def check_class_paths(checkpoint: dict, where: str, method: Optional[type] = None, named: Any = (),
                      given: Any = ()) -> None:
    """Refuse a checkpoint whose class paths would import or call what the user did not name (see the module
    docstring), before Lightning or jsonargparse read them. ``method`` is the class that will load it (None:
    the one the checkpoint records), ``named`` what the user gave (its strings count), ``given`` the
    hyper-parameters the caller replaces (not read)."""
    from pytorch_lightning import LightningModule

    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in given}
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in INSTANTIATORS:
        refuse(where, f"the instantiator {instantiator!r}", "remove hyper_parameters['_instantiator'] from the file")
    path = hparams.get("_class_path")  # the method Lightning and jsonargparse build (the one we record is only compared)
    if path is not None:
        cls = already_imported(path) if isinstance(path, str) else None
        if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
            refuse(where, f"the method {path!r}, which is not a LightningModule already imported",
                   "import the module that defines it first, and give the method (--model) yourself")
        method = method or cls
    named = strings(named)
    for key, path in class_paths(hparams, method):
        if path not in named:
            refuse(where, f"the class or function {path!r} at hyper-parameter {key!r}",
                   f"give {key} yourself (--model.init_args.{key}, or load_from_checkpoint(path, {key}=...))")
