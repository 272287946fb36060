"""Per-GPU memory and compute of mutual learning in each placement, from one peer measured on the CPU.

``python -m lightning_kd.tools.peer_cost --peers resnet8x4 resnet8x4 --num-classes 100 --batch 64``

Measured for each peer (one network, batch ``--batch``, float32): the bytes of its parameters, gradients,
buffers and SGD momentum, the bytes autograd keeps for its backward pass, and the FLOPs of a forward and
of a forward + backward (``torch.utils.flop_counter``). Derived per process (per GPU) for the K peers of one
batch, under the ``sequential`` schedule (the ``simultaneous`` one drops the refresh forwards): replicated
holds all K peers and keeps their K graphs alive at once (each waits for its turn); peer-parallel holds
one. These are counts, not GPU timings or allocator peaks.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_kd.models import build_network


def saved_bytes(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``net(x)``."""
    seen: dict[tuple, int] = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    return sum(seen.values())


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure(spec, num_classes: int, shape: tuple[int, int, int], batch: int) -> dict[str, int]:
    """One peer's state bytes (parameters, gradients, buffers, SGD momentum), saved activations and FLOPs."""
    torch.manual_seed(0)
    net = build_network(spec, num_classes, shape[0]).train()
    x = torch.randn(batch, *shape)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    activations = saved_bytes(net, x)
    optimizer.step()
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    return {
        "params": nbytes(net.parameters()), "grads": nbytes(p.grad for p in net.parameters()),
        "buffers": nbytes(net.buffers()),
        "momentum": nbytes(s["momentum_buffer"] for s in optimizer.state.values()),
        "activations": activations,
        "forward": flops(lambda: net(x)),
        "train": flops(lambda: net(x).sum().backward()),
    }


def per_gpu(peers: list[dict[str, int]], batch: int, num_classes: int) -> dict[str, dict[str, float]]:
    """Per-process figures of one batch for replicated and peer-parallel (the largest peer's process)."""
    k, logits = len(peers), batch * num_classes * 4
    state = [p["params"] + p["grads"] + p["buffers"] + p["momentum"] for p in peers]
    refresh = [p["forward"] for p in peers[:-1]]  # every peer but the last refreshes once (sequential)
    return {
        "replicated": {"state": sum(state), "activations": sum(p["activations"] for p in peers),
                       "flops": sum(p["train"] for p in peers) + sum(refresh), "exchanged": 0,
                       "all_reduced": sum(p["params"] for p in peers)},
        "peer_parallel": {"state": max(state), "activations": max(p["activations"] for p in peers),
                          "flops": max(p["train"] + (p["forward"] if i < k - 1 else 0) for i, p in enumerate(peers)),
                          "exchanged": k * logits + (k - 1) * logits, "all_reduced": max(p["params"] for p in peers)},
    }


def table(figures: dict[str, dict[str, float]], k: int) -> str:
    mb, gf = 2 ** 20, 1e9
    rows = ["| per GPU, one batch | replicated | peer_parallel |", "|---|---|---|",
            f"| peers held | {k} | 1 |"]
    for key, label, unit in [("state", "parameters + gradients + buffers + SGD momentum", mb),
                             ("activations", "activations kept for backward", mb),
                             ("flops", "GFLOPs (forwards, backwards, refreshes)", gf),
                             ("exchanged", "logits received in the data group", mb),
                             ("all_reduced", "gradients all-reduced (when D > 1 / under DDP)", mb)]:
        fmt = "{:.2f} GFLOP" if unit == gf else "{:.2f} MiB"
        rows.append(f"| {label} | {fmt.format(figures['replicated'][key] / unit)} | "
                    f"{fmt.format(figures['peer_parallel'][key] / unit)} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="+", default=["resnet8x4", "resnet8x4"], help="network names")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--input", type=int, nargs=3, default=[3, 32, 32], metavar=("C", "H", "W"))
    parser.add_argument("--batch", type=int, default=64, help="batch per data group")
    args = parser.parse_args(argv)
    peers = [measure(spec, args.num_classes, tuple(args.input), args.batch) for spec in args.peers]
    for spec, p in zip(args.peers, peers):
        print(f"{spec}: {p['params'] / 4:,.0f} parameters, forward {p['forward'] / 1e9:.3f} GFLOP, "
              f"forward + backward {p['train'] / 1e9:.3f} GFLOP, activations {p['activations'] / 2 ** 20:.1f} MiB "
              f"(batch {args.batch})")
    print(table(per_gpu(peers, args.batch, args.num_classes), len(peers)))


if __name__ == "__main__":
    main()
