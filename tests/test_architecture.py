"""The library's shape, read from its source: no import circle, no method file importing another, and only
public Lightning names outside ``lightning_kd/compat.py`` (issue 24)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

# Where each installed package's source lies in the repository (setup.cfg's package_dir).
PACKAGES = {"lightning_kd": ROOT / "lightning_kd", "lightning_kd.callbacks": ROOT / "callbacks",
            "lightning_kd.datamodules": ROOT / "datamodules"}
COMPAT = ROOT / "lightning_kd" / "compat.py"
# Attributes of Lightning's loops (private classes: _FitLoop, _TrainingEpochLoop, ...) and connectors.
LOOP_INTERNALS = {"fit_loop", "epoch_loop", "validate_loop", "test_loop", "predict_loop", "epoch_progress",
                  "batch_progress", "optim_step_progress", "manual_optimization", "automatic_optimization_loop"}
# None: build_network lives in models/build.py, which both the models package and the ensemble
# (which builds its members) import.
KNOWN_CIRCLES = []


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if package == "lightning_kd" and parts[:1] in (["callbacks"], ["datamodules"], ["configs"]):
                continue
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The library modules ``name`` imports anywhere in its file (inside functions too)."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def import_circles() -> list[set[str]]:
    """The strongly connected groups of more than one module in the import graph (Tarjan)."""
    found = modules()
    graph = {name: imported(name, path, set(found)) for name, path in found.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(group)

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_the_checker_sees_a_circle_through_an_import_inside_a_function(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from lightning_kd.b import f\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from . import a\n")  # relative, inside a function
    monkeypatch.setitem(PACKAGES, "lightning_kd", tmp_path / "pkg")
    monkeypatch.setitem(PACKAGES, "lightning_kd.callbacks", tmp_path / "none")
    monkeypatch.setitem(PACKAGES, "lightning_kd.datamodules", tmp_path / "none")
    assert import_circles() == [{"lightning_kd.a", "lightning_kd.b"}]


def test_no_import_circle():
    assert len(modules()) > 50  # the whole library was read
    assert [c for c in import_circles() if c not in KNOWN_CIRCLES] == []


def test_no_method_file_imports_another_method_file():
    """What two methods share lives in a module of its own (adapters, distributed, relations, mutual, ...)."""
    found = modules()
    methods = {name for name in found if name.startswith("lightning_kd.methods.")}
    for name in methods:
        assert not imported(name, found[name], set(found)) & methods, f"{name} imports another method file"


def private_lightning_uses(path: Path) -> list[str]:
    """Uses of names Lightning keeps private: a ``_name`` attribute of anything but ``self``/``cls`` (or its
    getattr/hasattr/setattr string), a ``_name`` imported from a Lightning package, the loops' internals.
    torch's foreach kernels (``torch._foreach_*``, what torch's own optimizers call) are not Lightning's."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            own = isinstance(node.value, ast.Name) and (node.value.id in ("self", "cls") or (
                node.value.id == "torch" and node.attr.startswith("_foreach_")))
            if node.attr.startswith("_") and not node.attr.startswith("__") and not own:
                found.append(f"{where}: .{node.attr}")
            if node.attr in LOOP_INTERNALS:
                found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                and node.args[1].value.startswith("_") and not node.args[1].value.startswith("__"):
            found.append(f"{where}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "pytorch_lightning", "lightning_fabric", "lightning", "torchmetrics"):
            names = [*(node.module or "").split("."), *(alias.name for alias in node.names)]
            found += [f"{where}: {part}" for part in names if part.startswith("_") and not part.startswith("__")]
    return found


@pytest.mark.parametrize("source, expected", [
    ("trainer.fit_loop.epoch_progress.current.processed", 2),
    ("strategy._layer_sync", 1),
    ("getattr(parser, '_option_string_actions', {})", 1),
    ("from pytorch_lightning.utilities._pytree import x", 1),
    ("self._store, cls._x, obj.__class__, trainer.global_step", 0),
    ("torch._foreach_copy_(a, b)", 0),
    ("torch._dynamo.reset(); trainer._foreach_copy_", 2),
])
def test_the_private_name_check_finds_what_it_should(tmp_path, source, expected):
    path = tmp_path / "x.py"
    path.write_text(source + "\n")
    assert len(private_lightning_uses(path)) == expected


def test_library_uses_public_lightning_names_only():
    """Lightning's private names and loop internals appear in lightning_kd/compat.py alone (tested against
    the installed Lightning in tests/test_compat.py): an upgrade that moves them breaks there, loudly."""
    used = [use for path in modules().values() if path != COMPAT for use in private_lightning_uses(path)]
    assert used == []
    assert private_lightning_uses(COMPAT)  # and compat.py is where they are
