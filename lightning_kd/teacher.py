"""FrozenTeacher: everything about the teacher of a distillation run, in one place.

It loads the weights strictly, freezes them, keeps the network in eval mode, runs it without
autograd and returns its logits and the features a method asked for, caches logits per sample,
casts itself to bfloat16 for a fit and back, and swaps in other weights (RCO's route anchors).

It is deliberately *not* a submodule of the LightningModule: its weights come from
``teacher_ckpt`` and never appear in a checkpoint, DDP never sees (nor broadcasts) them, and
Lightning's ``train()`` calls never reach it. It follows the inputs to their device on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_kd.checkpoints import load_network_weights, repdistiller_names, read_weights
from lightning_kd.features import FeatureHooks, NetOutput
from lightning_kd.models import build_network, is_pretrained
from lightning_kd.resume import file_digest

NetSpec = Union[str, dict[str, Any]]
# The teacher's weights under each precision: bf16-mixed runs it in bfloat16 (it needs no float32
# master weights, having no gradients); the "true" precisions feed it inputs of their dtype.
TEACHER_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-true": torch.float16,
                  "64-true": torch.float64}


class TeacherLogitCache:
    """Teacher logits for ``size`` training samples, filled on first sight of each sample.

    Without random augmentation a training image is the same tensor every epoch, so the frozen
    teacher gives the same logits every epoch: the first epoch computes them, later epochs read them.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.logits: Optional[Tensor] = None
        self.filled: Optional[Tensor] = None

    def lookup(self, index: Tensor) -> Optional[Tensor]:
        """The cached logits of the samples ``index``, or None unless all of them are cached.

        Deciding costs one host-device sync per step (reading ``filled``), small beside the
        teacher forward it saves.
        """
        if self.filled is None:
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=index.device)
        if self.logits is not None and bool(self.filled[index].all()):
            return self.logits[index]
        return None

    def store(self, index: Tensor, logits: Tensor) -> None:
        if self.logits is None:
            self.logits = torch.zeros(self.size, *logits.shape[1:], dtype=logits.dtype, device=logits.device)
        self.logits[index] = logits
        self.filled[index] = True


def check_cacheable(datamodule, layers: Sequence[str]) -> None:
    """Raise a ValueError naming the fix when cached teacher logits would differ from live ones."""
    fix = "or set model.init_args.cache_teacher_outputs: false"
    if datamodule is None or not getattr(datamodule, "return_index", False):
        raise ValueError("cache_teacher_outputs keys the cache on sample indices: use a datamodule with "
                         f"`return_index: true` (any InMemoryDataModule) passed to the Trainer, {fix}.")
    random = getattr(datamodule, "random_augmentation", None)  # every datamodule of the library declares it
    if random is None:
        raise ValueError(f"cache_teacher_outputs is valid only without random augmentation, but "
                         f"{type(datamodule).__name__} does not say whether it has any: give it an attribute "
                         f"random_augmentation (False when every epoch sees the same training tensors), {fix}.")
    if random:
        how = f"pad={datamodule.pad}, flip={datamodule.flip}" if hasattr(datamodule, "pad") else "random crops"
        raise ValueError(f"cache_teacher_outputs is valid only without random augmentation, but "
                         f"{type(datamodule).__name__} draws its training batches at random ({how}): turn it off "
                         f"(data.init_args.pad: 0 and flip: false for the in-memory datamodules), {fix}.")
    if layers:
        raise ValueError(f"cache_teacher_outputs caches the teacher's logits only, but this method reads "
                         f"teacher features through hooks on {list(layers)}; those need the live forward, {fix}.")


class FrozenTeacher:
    """A trained network that never changes: the teacher of a distillation method.

    Args:
        spec: the network spec (a name of ``lightning_kd.models``, a dotted constructor path, or
            ``{"name": ..., **kwargs}``).
        checkpoint: its trained weights (a Lightning ``.ckpt`` or a plain state_dict), read with
            ``weights_only=True``; keys and shapes must match exactly. Not needed for a spec with published
            weights or a network that loads its own (``loads_own_weights``: a ``CheckpointEnsemble``).
        num_classes: outputs of the network.
        in_channels: input channels of the network.
    """

    def __init__(self, spec: NetSpec, checkpoint: Optional[Union[str, Path]], num_classes: int, in_channels: int):
        self.net = build_network(spec, num_classes, in_channels)
        self.files: dict[str, dict] = {}  # role -> {path, sha256} of every file read as teacher (in checkpoints)
        for i, path in enumerate(getattr(self.net, "paths", ())):  # a CheckpointEnsemble's members
            self.note_file(f"ensemble member {i}", path)
        if checkpoint:
            load_network_weights(self.net, checkpoint, what="teacher_ckpt")
            self.note_file("teacher_ckpt", checkpoint)
        elif getattr(self.net, "loads_own_weights", False):
            pass  # e.g. a CheckpointEnsemble: it read its members' files when it was built
        elif not is_pretrained(spec):
            raise ValueError("the teacher needs trained weights: set `teacher_ckpt` (e.g. best.ckpt of a Supervised "
                             "run), or give a teacher spec with published weights (torchvision `weights:`, timm "
                             "`pretrained: true`) or an ensemble of checkpoints ({name: "
                             "lightning_kd.models.CheckpointEnsemble, checkpoints: [a.ckpt, b.ckpt]}).")
        elif getattr(self.net, "new_head", False):
            raise ValueError(f"the teacher's published weights classify other classes than the data's {num_classes}: "
                             f"its head would be untrained. Fine-tune it on this data first (a Supervised run with "
                             f"`student: {spec}`) and give that run's best.ckpt as `teacher_ckpt`.")
        self.net.requires_grad_(False).eval()
        self.hooks: Optional[FeatureHooks] = None
        self.cache: Optional[TeacherLogitCache] = None
        self._originals: Optional[dict[str, Tensor]] = None  # float32 weights while cast to bfloat16

    def note_file(self, role: str, path: Union[str, Path]) -> None:
        """Record a file read as teacher by its content (``sha256``): a resume or test of this run's checkpoints
        must read the same content (:func:`lightning_kd.resume.check_teacher_files`)."""
        self.files[role] = {"path": str(path), "sha256": file_digest(path)}

    @property
    def layers(self) -> list[str]:
        """The layers whose features every forward returns."""
        return [] if self.hooks is None else self.hooks.names

    def watch(self, layers: Sequence[str]) -> None:
        """Return the features of ``layers`` (dotted module names) from every forward on."""
        if self.hooks is not None:
            self.hooks.remove()
        self.hooks = FeatureHooks(self.net, layers) if layers else None

    @torch.no_grad()
    def __call__(self, x: Tensor, index: Optional[Tensor] = None) -> NetOutput:
        """Logits (and the watched features) of ``x``, without autograd, in eval mode.

        ``index`` (the samples' dataset indices) reads and fills the logit cache when it is on.
        """
        if self.net.training:  # nothing should switch it, but a frozen teacher never trains
            self.net.eval()
        if self.cache is not None and index is not None:
            cached = self.cache.lookup(index)
            if cached is not None:
                return NetOutput(cached, {})
        self.follow(x)
        logits = self.net(x)
        if self.cache is not None and index is not None:
            self.cache.store(index, logits)
        return NetOutput(logits, {} if self.hooks is None else self.hooks.pop())

    def follow(self, x: Tensor) -> None:
        """Move the network to ``x``'s device (it is not a submodule, so Lightning does not move it)."""
        parameter = next(self.net.parameters(), None)
        if parameter is not None and parameter.device != x.device:
            self.net.to(x.device)

    # ----------------------------------------------------------------- fit-time options
    def setup(self, stage: str, trainer, channels_last: bool = False, compile: bool = False,
              cache: bool = False) -> None:
        """The module's options, from its ``setup``: channels_last memory format; weights in the dtype the
        precision calls for (:data:`TEACHER_DTYPES`; bfloat16 under ``bf16-mixed``: it runs without
        autograd, so nothing is lost in training); for a fit also the logit cache (checked against the
        data first) and ``torch.compile`` (in place, so the watched layers' hooks stay attached)."""
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        dtype = TEACHER_DTYPES.get(str(trainer.precision))
        if dtype is not None and self._originals is None:
            self._originals = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self.net.to(dtype)
        if stage != "fit":
            return
        if cache:
            check_cacheable(trainer.datamodule, self.layers)
            self.cache = TeacherLogitCache(len(trainer.datamodule.train_dataloader().dataset))
        if compile:
            self.net.compile()

    def teardown(self) -> None:
        """Back to the exact original float32 weights (the last ones loaded); the cache is dropped."""
        if self._originals is not None:
            self.net.to(torch.float32).load_state_dict(self._originals)
            self._originals = None
        self.cache = None

    # ----------------------------------------------------------------- other weights (RCO)
    def state_dict(self) -> dict[str, Tensor]:
        """The current weights (in the current dtype)."""
        return self.net.state_dict()

    def read_weights(self, path: Union[str, Path], what: str) -> dict[str, Tensor]:
        """The weights of ``path`` checked strictly against this network's keys and shapes, as float32."""
        expected = {k: v.float() if v.is_floating_point() else v for k, v in self.net.state_dict().items()}
        weights = read_weights(path, expected, what, type(self.net).__name__, repdistiller_names(self.net))
        self.note_file(f"{what} {Path(path).name}", path)
        return weights

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Swap in other weights during a fit (RCO's route anchors): copied into the current dtype and
        device, kept as the originals that :meth:`teardown` restores, and cached logits are void."""
        self.net.load_state_dict(state)
        if self._originals is not None:
            self._originals = {k: v.detach().clone() for k, v in state.items()}
        if self.cache is not None:
            self.cache = TeacherLogitCache(self.cache.size)
