"""Names of networks and runs, as tables and dashboards show them: ``small_cnn(width=4)``,
``KD small_cnn(width=4) <- small_cnn(width=16) seed0``."""
from __future__ import annotations

from typing import Any, Optional


def spec_name(spec: Any) -> str:
    """A network spec, compactly: ``{name: small_cnn, width: 4}`` -> ``small_cnn(width=4)``."""
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", "?")
        return f"{name}({', '.join(f'{k}={v}' for k, v in spec.items())})" if spec else str(name)
    return str(spec)


def network_name(init_args: dict) -> str:
    """The trained network of a method's ``init_args``; peer 0 for mutual learning."""
    peers = init_args.get("peers")
    if peers:
        return f"{spec_name(peers[0])}, peer 0 of {len(peers)}"
    return spec_name(init_args.get("student", "?"))


def run_name(model: dict, seed: Optional[int]) -> str:
    """A run's name from its model config (``class_path``, ``init_args``) and seed: method, pair, seed."""
    init_args = model.get("init_args") or {}
    method = str(model.get("class_path", "?")).rsplit(".", 1)[-1]
    pair = network_name(init_args)
    if init_args.get("teacher"):
        pair += f" <- {spec_name(init_args['teacher'])}"
    return f"{method} {pair}" + (f" seed{seed}" if isinstance(seed, int) and not isinstance(seed, bool) else "")
