"""Where mutual-learning peers live, and what crosses between processes: :class:`Replicated` (every process
holds every peer) or :class:`PeerParallel` (one peer per group of processes, with
:class:`~lightning_kd.peer_parallel.PeerParallelStrategy`).

The mutual-learning loop (:class:`~lightning_kd.mutual.MutualLearning`, under DML and IE-DML) calls a
placement through the same methods whichever it is: which peers are local, the exchange of what the peers
show each other and its refresh, the averaging of a peer's gradients and running statistics, the loss
terms gathered for logging, the checkpoint gathered and split, and the evaluation logits. Both placements
take the same steps on the same global batch (``tests/test_peer_parallel.py``).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_kd.distributed import average_across_ranks
from lightning_kd.features import NetOutput
from lightning_kd.peer_parallel import PeerLayout, PeerParallelStrategy

#: ``forward(i, x)``: peer ``i``'s output of ``x``.
PeerForward = Callable[[int, Tensor], NetOutput]


class Placement:
    """What the mutual-learning loop asks of a placement; :class:`Replicated` and :class:`PeerParallel` answer.

    Args:
        num_peers: the peers of the module, peer 0 (the student) first.
    """

    #: This process's peer and process groups, where one peer per process group is placed; else None.
    layout: Optional[PeerLayout] = None

    def __init__(self, num_peers: int):
        self.num_peers = num_peers

    def place(self, module: nn.Module) -> None:
        """Check the trainer's strategy and place ``module``'s peers for a fit (in its ``setup``)."""
        raise NotImplementedError

    @property
    def local_peers(self) -> list[int]:
        """The peers this process holds and trains, in order."""
        raise NotImplementedError

    def random_stream(self, step: int, device: torch.device):
        """The context of training step ``step``'s own random numbers (a peer's dropout)."""
        raise NotImplementedError

    def exchange(self, shown: dict[int, NetOutput]) -> dict[int, NetOutput]:
        """Every peer's shown output of this step's batch, from the local peers' ``shown``."""
        raise NotImplementedError

    def refreshed(self, i: int, output: Callable[[], NetOutput], like: Tensor) -> NetOutput:
        """Peer ``i``'s shown output after its step; ``output()`` computes it on a process that holds the peer;
        ``like`` is any tensor of the batch's size and device."""
        raise NotImplementedError

    def average(self, tensors: Sequence[Tensor]) -> None:
        """In place, average a peer's ``tensors`` (gradients, running statistics) over the processes that
        train it."""
        raise NotImplementedError

    def gather_losses(self, order: list[int], totals: dict[int, Tensor], terms: dict[str, Tensor],
                      names: list[str], device: torch.device) -> tuple[dict[str, Tensor], dict[int, Tensor]]:
        """``(terms of the peers stepped on other processes as peer{i}/<name>, every stepping peer's total)``
        from this process's ``totals`` of the peers in ``order`` and its latest loss ``terms``
        (``peer{i}/<name>`` for ``names``, the last being ``loss``)."""
        raise NotImplementedError

    def gather_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint to be written hold every peer (its weights, optimizer and scheduler states)."""
        raise NotImplementedError

    def local_checkpoint(self, checkpoint: dict, keys: set[str]) -> None:
        """Keep this process's share of a checkpoint that holds every peer: the weights named ``keys``."""
        raise NotImplementedError

    def evaluation_logits(self, x: Tensor, forward: PeerForward) -> dict[int, Tensor]:
        """The logits of an evaluation batch that the placement computes up front, by peer (peer 0, the
        student's, always; the others where they come at no extra forward)."""
        raise NotImplementedError


class Replicated(Placement):
    """Every process holds and trains every peer (one process, or DDP's processes on their shards).

    DDP's gradient reducer expects one backward per forward over all parameters, which mutual learning
    breaks (one backward per peer); the loop blocks it and :meth:`average` averages the stepping peer's
    gradients over all processes (one flat ``all_reduce``), and its running statistics after the step, so
    every rank holds identical peers. Works with ``strategy="ddp"`` at its default settings.
    """

    def place(self, module: nn.Module) -> None:
        pass  # PeerParallelStrategy refuses a replicated module itself

    @property
    def local_peers(self) -> list[int]:
        return list(range(self.num_peers))

    def random_stream(self, step: int, device: torch.device):
        return nullcontext()  # the global generators

    def exchange(self, shown: dict[int, NetOutput]) -> dict[int, NetOutput]:
        return shown

    def refreshed(self, i: int, output: Callable[[], NetOutput], like: Tensor) -> NetOutput:
        return output()

    def average(self, tensors: Sequence[Tensor]) -> None:
        average_across_ranks(tensors)  # over all processes

    def gather_losses(self, order, totals, terms, names, device):
        return {}, totals  # every peer stepped here

    def gather_checkpoint(self, checkpoint: dict) -> None:
        pass  # it holds every peer

    def local_checkpoint(self, checkpoint: dict, keys: set[str]) -> None:
        pass  # all of it is this process's

    def evaluation_logits(self, x: Tensor, forward: PeerForward) -> dict[int, Tensor]:
        return {0: forward(0, x).logits}  # the other peers are one local forward away


class PeerParallel(Placement):
    """One peer per group of processes: with ``K`` peers on ``W = K x D`` ranks, rank ``r`` holds and trains
    only peer ``r // D`` (the :class:`~lightning_kd.peer_parallel.PeerLayout`, which the strategy keeps for
    its sharding), its optimizer and its share of the work.

    Gradients and running statistics are averaged within the peer's ``D`` ranks; the ``K`` ranks of a data
    group exchange the peers' detached shown outputs with one all-gather per step, plus one broadcast per
    refreshed peer under ``schedule: sequential``. Checkpoints are gathered to rank 0 in the replicated
    layout (every peer, its optimizer and scheduler), so they resume here and load anywhere with every peer;
    after such a fit each process keeps its own peer only. A peer's own random numbers (dropout) come from a
    stream of its process and step, so the ranks of a data group still draw the same augmentations.
    """

    def place(self, module: nn.Module) -> None:
        """Check the strategy, lay the peers out (collective) and drop the other processes' peers."""
        strategy = module.trainer.strategy
        if not isinstance(strategy, PeerParallelStrategy):
            raise ValueError(f"placement 'peer_parallel' puts one peer on each process and needs the trainer's "
                             f"strategy 'peer_parallel' (lightning_kd.peer_parallel.PeerParallelStrategy), got "
                             f"{type(strategy).__name__}: set trainer.strategy: peer_parallel, or placement: "
                             f"replicated.")
        self.layout = strategy.place_peers(self.num_peers)
        for i in range(self.num_peers):
            if i != self.layout.peer:
                for submodule in module.peer_modules(i):
                    drop(module, submodule)

    @property
    def local_peers(self) -> list[int]:
        return [self.layout.peer]

    def random_stream(self, step: int, device: torch.device):
        return self.layout.own_random_stream(step, device)

    def exchange(self, shown: dict[int, NetOutput]) -> dict[int, NetOutput]:
        return dict(enumerate(self.layout.all_gather("train", shown[self.layout.peer])))

    def refreshed(self, i: int, output: Callable[[], NetOutput], like: Tensor) -> NetOutput:
        # computed by peer i's rank, broadcast to its data group
        return self.layout.broadcast("train", i, output() if i == self.layout.peer else None, like=like)

    def average(self, tensors: Sequence[Tensor]) -> None:
        average_across_ranks(tensors, self.layout.peer_group)

    def gather_losses(self, order, totals, terms, names, device):
        """One small all-gather in the data group: each rank's row of its own peer's terms (zeros when its
        peer sat this batch out)."""
        own = self.layout.peer
        if own in totals:
            row = torch.stack([terms[f"peer{own}/{name}"] for name in names]).float()
        else:
            row = torch.zeros(len(names), device=device)
        rows = self.layout.gather_rows(row)
        logged = {f"peer{i}/{name}": rows[i, j] for i in order if i != own for j, name in enumerate(names)}
        return logged, {i: rows[i, -1] for i in order}

    def gather_checkpoint(self, checkpoint: dict) -> None:
        self.layout.gather_checkpoint(checkpoint)

    def local_checkpoint(self, checkpoint: dict, keys: set[str]) -> None:
        self.layout.local_checkpoint(checkpoint, keys)

    def evaluation_logits(self, x: Tensor, forward: PeerForward) -> dict[int, Tensor]:
        """Every peer's logits of the data group's batch: one all-gather of this rank's peer's."""
        own = NetOutput(forward(self.layout.peer, x).logits, {})
        return {i: out.logits for i, out in enumerate(self.layout.all_gather("eval", own))}


PLACEMENTS: dict[str, type[Placement]] = {"replicated": Replicated, "peer_parallel": PeerParallel}


def drop(module: nn.Module, submodule: nn.Module) -> None:
    """Remove ``submodule`` (another rank's peer) from ``module``; its slot stays, as None."""
    name = next(n for n, m in module.named_modules() if m is submodule)
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent), attr, None)
