"""What the shell shows: library errors alone (no usage dump, no traceback), a suggestion for a
misspelt option, and ``lightning-kd list``, the catalogue of methods, networks, data and configs.

``LIGHTNING_KD_TRACEBACK=1`` shows the full traceback instead.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from typing import Optional

from pytorch_lightning.cli import LightningArgumentParser

from lightning_kd.configs import SHIPPED_CONFIGS
from lightning_kd.resume import imported

TRACEBACK_VARIABLE = "LIGHTNING_KD_TRACEBACK"


def raised_by_library(err: BaseException) -> bool:
    """Whether the innermost frame of ``err`` is in lightning_kd: a message written for users, not a bug
    deeper down (those keep their traceback)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("lightning_kd")


def root_cause(err: BaseException) -> BaseException:
    """The library's error in a ``raise ... from`` chain, else the exception at its bottom. jsonargparse wraps
    a constructor's error in its own ("Does not validate against any of the Union subtypes"), and a library
    error may explain the third-party one below it (an import, a download): the outermost error raised in
    lightning_kd is the one written for the user, whatever wraps it or lies under it."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return next((e for e in chain if raised_by_library(e)), chain[-1])


def report(err: BaseException) -> bool:
    """Print a library error alone and return True; False for anything else (or with the traceback variable)."""
    cause = root_cause(err)
    if os.environ.get(TRACEBACK_VARIABLE) or not raised_by_library(cause):
        return False
    sys.stderr.write(f"lightning-kd: {type(cause).__name__}: {cause}\n"
                     f"({TRACEBACK_VARIABLE}=1 shows the traceback.)\n")
    return True


def init_parameters(class_path: str) -> list[str]:
    """Every keyword ``class_path``'s constructor accepts, its bases' included (``**kwargs`` chains)."""
    cls = imported(class_path)
    names = []
    for klass in getattr(cls, "__mro__", []):
        if "__init__" in vars(klass):
            names += [p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "args", "kwargs")]
    return names


def suggestion(message: str, parser) -> str:
    """' Did you mean ...?' for a rejected option, from the class's parameters or the parser's options."""
    rejected = re.search(r"Option '([\w.]+)' is not accepted", message)
    owner = re.search(r"class_path '([\w.]+)'", message)
    missing = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", message) or re.search(
        r"Expected a dot import path string: ()(\w+)", message)
    unknown = re.search(r"unrecognized arguments: (--[\w.\-]+)", message, flags=re.I)
    if rejected and owner:
        wrong, known = rejected.group(1), init_parameters(owner.group(1))
    elif missing:
        module = importlib.import_module(missing.group(1) or "lightning_kd.methods")
        wrong, known = missing.group(2), getattr(module, "__all__", None) or dir(module)
    elif unknown:
        wrong, known = unknown.group(1), re.findall(r"(?<![\w-])--[\w.\-]+", parser.format_help())  # every --option
    else:
        return ""
    close = [c for c in difflib.get_close_matches(wrong, list(dict.fromkeys(known)), n=2, cutoff=0.6) if c != wrong]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


NOISE = [r"Expected a path but \S+ either not accessible or invalid", r"Does not validate against any of the Union subtypes",
         r"Subtypes: .*", r"- Expected a <class 'NoneType'>", r"Given value type: .*", r"Given value: .*",
         r"Errors:", r"Type .*? expects a function or a callable class: "]


def plain(message: str) -> str:
    """jsonargparse's message without the union-type bookkeeping around the error that matters."""
    for pattern in NOISE:
        message = re.sub(pattern, "", message)
    return re.sub(r"(?: -)+ ", " ", " ".join(message.split()))  # and the list bullets left without an item


class KDArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; a bad command line prints one line saying what is wrong (and the closest
    valid option) instead of the usage of every option."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error or os.environ.get(TRACEBACK_VARIABLE):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {plain(message)}{suggestion(message, parser)}\n"
                         f"({prog} --help lists every option; lightning-kd list names the methods, networks, "
                         f"data and configs.)\n")
        sys.exit(2)


def catalogue() -> str:
    """The text of ``lightning-kd list``."""
    import lightning_kd.datamodules as datamodules
    import lightning_kd.methods as methods
    from lightning_kd.models import MODELS

    def first_line(obj) -> str:
        return (inspect.getdoc(obj) or "").split("\n")[0]

    lines = ["Methods (--model NAME, or model.class_path in a config):"]
    lines += [f"  {name:<16} {first_line(getattr(methods, name))}" for name in methods.__all__]
    lines.append(f"  {'RCO':<16} KD whose teacher walks the route of anchors the teacher's run recorded "
                 f"(the RouteConstrainedTeacher callback; configs */rco*.yaml).")
    lines += ["", "Networks (student/teacher/peers specs; or a dotted path such as torchvision.models.resnet18):",
              "  " + ", ".join(MODELS)]
    data = [n for n in datamodules.__all__ if n.endswith("DataModule") and n != "InMemoryDataModule"]
    lines += ["", "Data (--data NAME):"] + [f"  {name:<24} {first_line(getattr(datamodules, name))}" for name in data]
    lines += ["", f"Shipped configs (-c FOLDER/NAME.yaml from any directory; in {SHIPPED_CONFIGS}):"]
    for folder in sorted(p for p in SHIPPED_CONFIGS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        lines.append(f"  {folder.name}/: " + ", ".join(sorted(p.name for p in folder.glob('*.yaml'))))
    lines += ["", "Run one: lightning-kd fit -c quickstart/teacher.yaml    (--print_config shows the resolved config)"]
    return "\n".join(lines)


def is_list_command(args: list[str]) -> bool:
    return args[:1] == ["list"]
