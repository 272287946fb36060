"""Per-GPU memory and compute of mutual learning in each placement, from one peer measured alone.

``python -m lightning_kd.tools.peer_cost --peers resnet8x4 resnet8x4 --num-classes 100 --batch 64``
(add ``--device cuda`` for the GPU figures below the counts)

Measured for each peer (one network, batch ``--batch``, float32): the bytes of its parameters, gradients,
buffers and SGD momentum, the bytes autograd keeps for its backward pass, and the FLOPs of a forward and
of a forward + backward (``torch.utils.flop_counter``). Derived per process (per GPU) for the K peers of one
batch, under the ``sequential`` schedule (the ``simultaneous`` one drops the refresh forwards): replicated
holds all K peers and keeps their K graphs alive at once (each waits for its turn); peer-parallel holds
one. These are counts, not GPU timings or allocator peaks.

With ``--device cuda``, each peer also trains alone on the GPU: the median time of an SGD step (forward,
backward, step) and of a refresh (a no-grad forward in training mode), the bytes it holds between steps
and the allocator's peak during a step. Per GPU, replicated then holds every peer and every graph
(at most the sum of the peaks: each peak also holds a step's transient buffers) and runs every step and
K - 1 refreshes; peer-parallel holds its own peer (its
peak); its step time is the slowest peer's step under ``simultaneous``, and under ``sequential`` the peers'
backwards, steps and refreshes in turn after their forwards at once, plus the exchange, which one GPU cannot
time.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

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


def median_seconds(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()``, the device synchronized around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def measure_on(device: torch.device, spec, num_classes: int, shape: tuple[int, int, int], batch: int,
               repeats: int = 20) -> dict[str, Optional[float]]:
    """One peer training alone on ``device``: median seconds of an SGD step and of a refresh; on CUDA the
    bytes held between steps (network, gradients, momentum) and the allocator's peak during a step."""
    torch.manual_seed(0)
    if device.type == "cuda":  # cuBLAS keeps a workspace from its first matmul: not the peer's to hold
        (torch.ones(8, 8, device=device, requires_grad=True) @ torch.ones(8, 8, device=device)).sum().backward()
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0  # what others hold
    net = build_network(spec, num_classes, shape[0]).to(device).train()
    x, y = torch.randn(batch, *shape, device=device), torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    def forward():  # with its graph, as a step's forward (dropped at once)
        torch.nn.functional.cross_entropy(net(x), y)

    def refresh():
        with torch.no_grad():
            net(x)

    figures: dict[str, Optional[float]] = {"step_s": median_seconds(step, device, repeats),
                                           "forward_s": median_seconds(forward, device, repeats),
                                           "refresh_s": median_seconds(refresh, device, repeats),
                                           "held": None, "peak": None}
    if device.type == "cuda":
        not_the_peer = before + x.nbytes + y.nbytes
        torch.cuda.synchronize(device)
        figures["held"] = torch.cuda.memory_allocated(device) - not_the_peer
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        figures["peak"] = torch.cuda.max_memory_allocated(device) - not_the_peer
    return figures


def per_gpu_measured(peers: list[dict[str, Optional[float]]]) -> dict[str, dict[str, Optional[float]]]:
    """Per-GPU step time and memory peak of each placement and schedule, from each peer measured alone
    (:func:`measure_on`; the exchange left out).

    Replicated runs every step, plus every refresh but the last peer's under ``sequential``. Peer-parallel
    under ``simultaneous``: the slowest peer's step, all processes at once. Under ``sequential`` the
    processes run their forwards at once, then wait for each other: peer i's backward and SGD step come
    after peer i - 1's refresh reached it, so the backwards, steps and refreshes add up.
    """
    refreshes = sum(p["refresh_s"] for p in peers[:-1])
    after_forward = sum(p["step_s"] - p["forward_s"] for p in peers)
    peaks = [p["peak"] for p in peers]
    known = all(peak is not None for peak in peaks)
    steps = sum(p["step_s"] for p in peers)
    return {"replicated": {"sequential_s": steps + refreshes, "simultaneous_s": steps,
                           "peak": sum(peaks) if known else None},
            "peer_parallel": {"sequential_s": max(p["forward_s"] for p in peers) + after_forward + refreshes,
                              "simultaneous_s": max(p["step_s"] for p in peers),
                              "peak": max(peaks) if known else None}}


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
    parser.add_argument("--device", default=None, help="also train each peer alone on this device (e.g. cuda)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per peer (after 3 warm-up steps)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.device and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible here; drop --device for the counts alone")
    shape = tuple(args.input)
    peers = [measure(spec, args.num_classes, shape, args.batch) for spec in args.peers]
    for spec, p in zip(args.peers, peers):
        print(f"{spec}: {p['params'] / 4:,.0f} parameters, forward {p['forward'] / 1e9:.3f} GFLOP, "
              f"forward + backward {p['train'] / 1e9:.3f} GFLOP, activations {p['activations'] / 2 ** 20:.1f} MiB "
              f"(batch {args.batch})")
    print(table(per_gpu(peers, args.batch, args.num_classes), len(peers)))
    if args.device:
        device = torch.device(args.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        alone = [measure_on(device, spec, args.num_classes, shape, args.batch, args.repeats) for spec in args.peers]
        for spec, p in zip(args.peers, alone):
            memory = "" if p["peak"] is None else \
                f", holds {p['held'] / 2 ** 20:.1f} MiB, peak {p['peak'] / 2 ** 20:.1f} MiB during a step"
            print(f"{spec} alone on {name}: step {p['step_s'] * 1e3:.2f} ms (forward {p['forward_s'] * 1e3:.2f} ms), "
                  f"refresh {p['refresh_s'] * 1e3:.2f} ms"
                  f"{memory} (batch {args.batch}, float32, median of {args.repeats})")
        print(measured_table(per_gpu_measured(alone), name))


def measured_table(figures: dict[str, dict[str, Optional[float]]], device: str) -> str:
    rep, par = figures["replicated"], figures["peer_parallel"]
    rows = [f"| per GPU, one batch, from each peer alone on {device} | replicated | peer_parallel |", "|---|---|---|",
            f"| step time, sequential schedule (peer-parallel: without the exchange) | {rep['sequential_s'] * 1e3:.2f} ms "
            f"| {par['sequential_s'] * 1e3:.2f} ms |",
            f"| step time, simultaneous schedule (peer-parallel: without the exchange) | "
            f"{rep['simultaneous_s'] * 1e3:.2f} ms | {par['simultaneous_s'] * 1e3:.2f} ms |"]
    if rep["peak"] is not None:
        rows.append(f"| allocator peak (replicated: at most the sum of the peers' peaks) | <= {rep['peak'] / 2 ** 20:.1f} MiB | "
                    f"{par['peak'] / 2 ** 20:.1f} MiB |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
