"""The captured training step (``capture_step: true``): teacher forward, student forward, the losses, the
backward pass and the SGD update compiled by ``torch.compile`` as one graph (``fullgraph``, static shapes),
with CUDA graphs on a GPU (``mode="reduce-overhead"``) and the default mode on the CPU.

How it stays the eager step: the batch is copied into fixed buffers (one set per batch shape); the gradients
come from ``torch.autograd.grad`` inside the graph (traced with ``torch._dynamo.config.trace_autograd_ops``;
``Optimizer.step`` does not compile as one graph) and the update is torch's own functional SGD
(``torch.optim.sgd.sgd``) on the parameters and the optimizer's momentum buffers, with the group's momentum,
weight decay and Nesterov setting; the learning rate is a device tensor rewritten, in place, whenever the LR
schedule has changed the group's ``lr``; the term-weight warm-up factors are tensors made once an epoch.
Lightning's loop runs as before (its hooks, logging at the loggers' cadence, the finite check on the step's
detached terms, checkpoints): the graph writes no ``.grad``, so the optimizer's own ``step`` that Lightning
calls afterwards finds no gradient and changes nothing, and the module's ``backward`` hook does nothing.

What it cannot capture is refused when training starts (:func:`refusal`), naming the setting and the fix; a
method whose step does not compile as one graph is refused at its first step, before any weight changes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd

from lightning_kd.batch import Batch
from lightning_kd.compat import GraphBreak, mark_static, trace_autograd_in_graphs

FIX = "or set model.init_args.capture_step: false"
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
#: The torch.compile backend. The tests of many methods use "aot_eager" (the same graph, with the backward
#: pass and the SGD update, run by eager kernels; compiled in a tenth of inductor's time on a CPU).
BACKEND = "inductor"


def refusal(module, trainer) -> Optional[str]:
    """Why ``module``'s fit on ``trainer`` cannot be captured as one graph, with the fix; None when it can."""
    name = type(module).__name__
    if not module.automatic_optimization:
        return (f"{name} steps its own optimizers (manual optimization, e.g. DML's and IE-DML's peers); "
                f"capture_step compiles one optimizer's step: set model.init_args.capture_step: false.")
    if len(trainer.optimizers) != 1:
        return f"{name} has {len(trainer.optimizers)} optimizers; capture_step compiles one optimizer's step, {FIX}."
    optimizer = trainer.optimizers[0]
    if type(optimizer) is not torch.optim.SGD:
        return (f"the optimizer is {type(optimizer).__name__}; capture_step runs torch's functional SGD inside the "
                f"graph (Optimizer.step does not compile as one graph): use torch.optim.SGD, {FIX}.")
    for group in optimizer.param_groups:
        if group["dampening"] or group.get("fused") or group.get("differentiable"):
            return (f"SGD with dampening, fused or differentiable (here dampening={group['dampening']}, fused="
                    f"{group.get('fused')}, differentiable={group.get('differentiable')}) is not captured: leave them "
                    f"at their defaults, {FIX}.")
    if trainer.accumulate_grad_batches != 1:
        return (f"trainer.accumulate_grad_batches is {trainer.accumulate_grad_batches}; the captured step updates "
                f"the weights every batch: set it to 1 (a larger batch instead), {FIX}.")
    if trainer.gradient_clip_val:
        return (f"trainer.gradient_clip_val is {trainer.gradient_clip_val}; the captured step does not clip "
                f"gradients: unset it, {FIX}.")
    if trainer.world_size > 1:
        return (f"the run has {trainer.world_size} processes; the captured step averages no gradients across "
                f"processes: train on one device, {FIX}.")
    if str(trainer.precision) in ("16-mixed", "16"):
        return f"precision {trainer.precision} scales the loss (GradScaler), which is not captured: use bf16-mixed, {FIX}."
    if getattr(module, "cache_teacher_outputs", False):
        return (f"cache_teacher_outputs decides per step whether the cache holds a batch (a host-device sync), "
                f"which a graph cannot: set cache_teacher_outputs: false, {FIX}.")
    dropout = [n for n, m in module.named_modules() if isinstance(m, DROPOUT) and m.p > 0]
    if dropout:
        return (f"the networks have dropout ({dropout[:3]}), whose random masks differ inside a compiled graph: "
                f"build them without dropout, {FIX}.")
    return None


class CapturedStep:
    """The whole training step of ``module`` (a method fitted with one SGD optimizer) as one compiled function;
    called with a training :class:`~lightning_kd.batch.Batch`, it trains on it and returns the detached total."""

    def __init__(self, module, optimizer: torch.optim.SGD):
        self.module, self.optimizer = module, optimizer
        device = module.device
        for group in optimizer.param_groups:  # the SGD state the graph updates in place (also what checkpoints hold)
            for p in group["params"]:
                p.grad = None  # Lightning's own optimizer step must find no gradient (the graph writes none)
                if group["momentum"] and optimizer.state[p].get("momentum_buffer") is None:
                    # zeros then grad (dampening 0) is exactly the first eager step's copy of the gradient
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.params = [list(group["params"]) for group in optimizer.param_groups]
        self.momentum_buffers = [[optimizer.state[p].get("momentum_buffer") for p in group] for group in self.params]
        for buffer in (b for group in self.momentum_buffers for b in group if b is not None):
            mark_static(buffer)  # updated in place by the graph: CUDA graphs skip a graph that mutates a copied input
        self.settings = self.group_settings()
        self.lrs = [torch.tensor(float(group["lr"]), device=device) for group in optimizer.param_groups]
        self.lr_values = [float(group["lr"]) for group in optimizer.param_groups]
        for lr in self.lrs:
            mark_static(lr)
        self.buffers: dict[tuple, tuple[Tensor, ...]] = {}
        torch.compiler.reset()  # compiled steps of earlier fits in this process would count to its recompile limit
        self.cuda_graphs = device.type == "cuda" and BACKEND == "inductor"
        mode = "reduce-overhead" if self.cuda_graphs else None
        trace_autograd_in_graphs()
        self.compiled = torch.compile(self.step, fullgraph=True, dynamic=False, backend=BACKEND,
                                      mode=mode)

    def group_settings(self) -> list[tuple]:
        return [(group["momentum"], group["weight_decay"], group["nesterov"], group["maximize"])
                for group in self.optimizer.param_groups]

    def step(self, x: Tensor, y: Tensor, index: Optional[Tensor], lrs: list[Tensor],
             warmup: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The function compiled: losses, gradients and the SGD update of every parameter with a gradient."""
        module = self.module
        losses, scales = module.step_losses(Batch(x, y, index))
        total, terms, factors = module.total_of(losses, "", scales, warmup)
        params = [p for group in self.params for p in group]
        grads = iter(torch.autograd.grad(total, params, allow_unused=True))
        with torch.no_grad():
            for group, buffers, lr, (momentum, weight_decay, nesterov, maximize) in zip(
                    self.params, self.momentum_buffers, lrs, self.settings):
                found = [(p, g, b) for p, b, g in zip(group, buffers, grads) if g is not None]  # as eager SGD:
                if found:  # a parameter without a gradient is skipped, weight decay and momentum included
                    trained, gradients, momenta = (list(column) for column in zip(*found))
                    sgd(trained, gradients, momenta, foreach=True, weight_decay=weight_decay,
                        momentum=momentum, lr=lr, dampening=0.0, nesterov=nesterov, maximize=maximize)
        return total.detach(), terms, factors

    def inputs(self, batch: Batch) -> tuple[Optional[Tensor], ...]:
        """``batch`` copied into the fixed buffers of its shapes (a new shape, e.g. a last smaller batch, gets
        its own buffers and graph)."""
        tensors = tuple(batch)
        key = tuple(None if t is None else (t.shape, t.dtype, t.stride()) for t in tensors)
        buffers = self.buffers.get(key)
        if buffers is None:
            buffers = tuple(None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                                                        device=t.device) for t in tensors)
            for buffer in buffers:
                if buffer is not None:
                    mark_static(buffer)
            self.buffers[key] = buffers
        for buffer, t in zip(buffers, tensors):
            if buffer is not None:
                buffer.copy_(t)
        return buffers

    def __call__(self, batch: Batch) -> Tensor:
        for i, group in enumerate(self.optimizer.param_groups):
            if group["lr"] != self.lr_values[i]:  # the schedule changed it: one in-place write, no sync
                self.lr_values[i] = group["lr"]
                self.lrs[i].fill_(group["lr"])
        if self.group_settings() != self.settings:
            raise ValueError(f"capture_step: the optimizer's momentum, weight decay, nesterov or maximize changed "
                             f"during the fit ({self.settings} -> {self.group_settings()}; a schedule that cycles "
                             f"momentum, such as OneCycleLR): the graph holds them fixed. Use a schedule of the "
                             f"learning rate alone, {FIX}.")
        x, y, index = self.inputs(batch)
        if self.cuda_graphs:  # each call a new step: its outputs are overwritten by the next replay...
            torch.compiler.cudagraph_mark_step_begin()
        try:
            total, terms, factors = self.compiled(x, y, index, self.lrs, self.module.warmup_factors())
        except GraphBreak as err:
            reason = str(err).strip().splitlines()[0]
            raise RuntimeError(f"capture_step: {type(self.module).__name__}'s training step does not compile as one "
                               f"graph ({reason}); nothing was trained. Set model.init_args.capture_step: "
                               f"false.") from err
        if self.cuda_graphs:  # ...so what outlives the step (logged values, the finite check's) is copied
            total, terms, factors = total.clone(), clones(terms), clones(factors)
        self.module.record_step(terms, factors, len(x))
        return total


def clones(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: tensor.clone() for name, tensor in tensors.items()}
