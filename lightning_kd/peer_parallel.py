"""Mutual learning with one peer per process: the process layout and the strategy that runs it.

With ``K`` peers on ``W = K x D`` processes, rank ``r`` trains peer ``r // D`` on data shard ``r % D``:

- a *peer group* holds the ``D`` ranks of one peer (data parallel: gradients and BatchNorm statistics
  are averaged inside it only);
- a *data group* holds the ``K`` ranks that see the same shard, one per peer; they exchange what each
  peer shows the others (its detached logits) with one all-gather per step.

A peer group's ranks are consecutive, so on a node its gradient all-reduce, the larger message, stays on
the node's fastest links. Codistillation places peers this way (Anil et al. 2018,
https://arxiv.org/abs/1804.03235).
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from lightning_fabric.utilities.apply_func import move_data_to_device
from lightning_fabric.utilities.seed import pl_worker_init_function
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor, nn

from lightning_kd.features import NetOutput


class PeerLayout:
    """This process's peer, its data group, and the two process groups it talks to.

    Creating one is collective: every process must create it, with the same ``num_peers``.
    """

    def __init__(self, num_peers: int):
        world, rank = dist.get_world_size(), dist.get_rank()
        if world % num_peers:
            raise ValueError(f"placement 'peer_parallel' puts each of the {num_peers} peers on world_size / "
                             f"{num_peers} processes, but there are {world} processes: use a world size that is a "
                             f"multiple of {num_peers} (trainer.devices x trainer.num_nodes), or placement "
                             f"'replicated'.")
        self.num_peers, self.num_data_groups = num_peers, world // num_peers
        self.peer, self.data_group = divmod(rank, self.num_data_groups)
        d = self.num_data_groups
        # new_group is collective: every rank creates every group, in the same order.
        peer_groups = [dist.new_group([k * d + j for j in range(d)]) for k in range(num_peers)]
        data_groups = [dist.new_group([k * d + j for k in range(num_peers)]) for j in range(d)]
        self.peer_group, self.data_group_pg = peer_groups[self.peer], data_groups[self.data_group]
        self.shapes: dict[str, list[list[tuple]]] = {}  # per exchange tag: each peer's (name, shape, dtype)
        self.seed = torch.initial_seed()  # seed_everything's, the same on every process

    def own_random_stream(self, step: int, device: torch.device):
        """Inside, random numbers (a peer's dropout) come from this process's stream of training step
        ``step``; the global generators are left as they were, so they stay equal on the ranks of a data
        group and draw the same augmentations for them (on the device, or the loader workers' seeds)."""
        return private_random_stream(self.seed, dist.get_rank(), step, device)

    def rank_of(self, peer: int) -> int:
        """The global rank that holds ``peer`` in this process's data group."""
        return peer * self.num_data_groups + self.data_group

    def layout_of(self, tag: str, output: NetOutput) -> list[list[tuple]]:
        """Every peer's tensors of exchange ``tag`` (learnt once: a peer shows the same shapes every step)."""
        if tag not in self.shapes:
            mine = [(name, tuple(t.shape[1:]), t.dtype) for name, t in tensors_of(output)]
            everyone: list = [None] * self.num_peers
            dist.all_gather_object(everyone, mine, group=self.data_group_pg)
            self.shapes[tag] = everyone
        return self.shapes[tag]

    def all_gather(self, tag: str, output: NetOutput) -> list[NetOutput]:
        """Every peer's ``output`` of this data group's batch, in peer order (one all-gather)."""
        shapes = self.layout_of(tag, output)
        n = len(output.logits)
        sizes = [n * sum(shape_numel(s) for _, s, _ in peer) for peer in shapes]
        flat = pad(flatten(output, transport_dtype(shapes)), max(sizes))
        return [unflatten(row, peer, n) for row, peer in zip(self.gather_rows(flat), shapes)]

    def gather_rows(self, row: Tensor) -> Tensor:
        """Every peer's ``row`` (the same shape on every rank of the data group), stacked in peer order."""
        rows = [torch.empty_like(row) for _ in range(self.num_peers)]
        dist.all_gather(rows, row, group=self.data_group_pg)
        return torch.stack(rows)

    def broadcast(self, tag: str, peer: int, output: Optional[NetOutput], like: Tensor) -> NetOutput:
        """``peer``'s ``output`` (given on its own rank, None elsewhere) to its whole data group, after an
        :meth:`all_gather` of the same ``tag``; ``like`` is any tensor of the batch's size and device."""
        shapes = self.shapes[tag]
        n, dtype = len(like), transport_dtype(shapes)
        if output is not None:
            flat = flatten(output, dtype)
        else:
            flat = torch.empty(n * sum(shape_numel(s) for _, s, _ in shapes[peer]), dtype=dtype, device=like.device)
        dist.broadcast(flat, src=self.rank_of(peer), group=self.data_group_pg)
        return unflatten(flat, shapes[peer], n)

    def gather_checkpoint(self, checkpoint: dict) -> None:
        """Make rank 0's checkpoint hold every peer: weights, then optimizer and LR scheduler states in peer
        order, the layout of a replicated run's checkpoint. Collective over data group 0 (each peer's first
        rank; the other ranks' checkpoints are never written)."""
        if self.data_group != 0:
            return
        mine = move_data_to_device({key: checkpoint.get(key, []) for key in PEER_STATES}, "cpu")
        parts: Optional[list] = [None] * self.num_peers if dist.get_rank() == 0 else None
        dist.gather_object(mine, parts, dst=0, group=self.data_group_pg)
        if parts is not None:
            checkpoint["state_dict"] = {k: v for part in parts for k, v in part["state_dict"].items()}
            for key in PEER_STATES[1:]:
                if key in checkpoint:
                    checkpoint[key] = [state for part in parts for state in part[key]]

    def local_checkpoint(self, checkpoint: dict, keys: set[str]) -> None:
        """This rank's share of a checkpoint that holds every peer: the weights named ``keys``, its peer's
        optimizer and LR scheduler states."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        for key in PEER_STATES[1:]:
            if checkpoint.get(key):
                checkpoint[key] = [checkpoint[key][self.peer]]


PEER_STATES = ("state_dict", "optimizer_states", "lr_schedulers")


@contextmanager
def private_random_stream(seed: int, rank: int, step: int, device: torch.device) -> Iterator[None]:
    """Draw from generators seeded by ``(seed, rank, step)`` (CPU and ``device``), then restore the global
    ones. The stream is new every step and process, and the same again on a resumed run."""
    value = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(value)
            yield
        return
    module = torch.get_device_module(device.type)
    with torch.random.fork_rng(devices=[device.index if device.index is not None else module.current_device()],
                               device_type=device.type), \
            (module.device(device) if hasattr(module, "device") else nullcontext()):
        torch.random.default_generator.manual_seed(value)
        module.manual_seed(value)  # this process's device only (not manual_seed_all)
        yield


def tensors_of(output: NetOutput) -> list[tuple[str, Tensor]]:
    return [("logits", output.logits), *sorted(output.features.items())]


def shape_numel(shape: tuple) -> int:
    return int(torch.Size(shape).numel())


def transport_dtype(shapes: list[list[tuple]]) -> torch.dtype:
    """One dtype that holds every peer's tensors exactly (e.g. float32 for bfloat16 and float32)."""
    dtype = shapes[0][0][2]
    for peer in shapes:
        for _, _, d in peer:
            dtype = torch.promote_types(dtype, d)
    return dtype


def flatten(output: NetOutput, dtype: torch.dtype) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(dtype) for _, t in tensors_of(output)])


def pad(flat: Tensor, size: int) -> Tensor:
    return torch.cat([flat, flat.new_zeros(size - len(flat))]) if len(flat) < size else flat


def unflatten(flat: Tensor, shapes: list[tuple], n: int) -> NetOutput:
    tensors, start = {}, 0
    for name, shape, dtype in shapes:
        size = n * shape_numel(shape)
        tensors[name] = flat[start:start + size].view(n, *shape).to(dtype)
        start += size
    logits = tensors.pop("logits")
    return NetOutput(logits, tensors)


class PeerParallelStrategy(DDPStrategy):
    """DDP's processes without DDP's wrapper, for mutual learning with one peer per process
    (``placement: peer_parallel`` of :class:`~lightning_kd.methods.DML` and :class:`~lightning_kd.methods.IEDML`,
    :class:`lightning_kd.placement.PeerParallel`).

    Its ranks hold different peers, possibly of different architectures, so the module is not
    wrapped in ``DistributedDataParallel`` (which requires the same parameters on every rank): the
    placement averages each peer's gradients and BatchNorm statistics within the peer's group itself.
    The strategy holds the fit's :class:`PeerLayout` (:meth:`place_peers`) and shards the data by data
    group, so the ranks of a data group see the same samples. Outside a peer-parallel fit (test, predict:
    every rank holds every peer) it is plain DDP. Registered as ``strategy: peer_parallel``.
    """

    #: This process's peer and process groups during a peer-parallel fit; None otherwise.
    layout: Optional[PeerLayout] = None

    def place_peers(self, num_peers: int) -> PeerLayout:
        """Lay ``num_peers`` peers out over the processes for this fit (collective: every process calls it)."""
        self.layout = PeerLayout(num_peers)
        return self.layout

    @property
    def distributed_sampler_kwargs(self) -> dict:
        if self.layout is None:
            return super().distributed_sampler_kwargs
        return {"num_replicas": self.layout.num_data_groups, "rank": self.layout.data_group}

    def process_dataloader(self, dataloader: object) -> object:
        """Seed the loader's workers by data group, not by process (``seed_everything(workers=True)``, as the
        CLI seeds): the ranks of a data group then draw the same random augmentations in their workers."""
        if self.layout is not None and int(os.environ.get("PL_SEED_WORKERS", 0)) \
                and getattr(dataloader, "worker_init_fn", False) is None:
            dataloader.worker_init_fn = partial(pl_worker_init_function, rank=self.layout.data_group)
        return dataloader

    def configure_ddp(self) -> None:
        if self.layout is None:
            raise ValueError(f"strategy 'peer_parallel' trains mutual-learning peers one per process, but "
                             f"{type(self.lightning_module).__name__} is not a DML (or IEDML) with placement "
                             f"'peer_parallel': set model placement: peer_parallel, or use strategy 'ddp'.")
        if any(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules()):
            raise ValueError("placement 'peer_parallel' averages BatchNorm statistics within each peer's "
                             "processes itself; trainer.sync_batchnorm would synchronise across peers: drop it.")

    def teardown(self) -> None:
        self.layout = None  # the next stage (test, predict) holds every peer: plain DDP
        super().teardown()


if "peer_parallel" not in StrategyRegistry:
    StrategyRegistry.register("peer_parallel", PeerParallelStrategy,
                              description="mutual learning with one peer per process (lightning_kd)")
