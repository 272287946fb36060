"""IE-DML: Deep Mutual Learning with inheritance and exploration between the peers.

Huang, Guo, Wang, Liu, Hua, Zhang, Li. "Revisiting Knowledge Distillation: An Inheritance and
Exploration Framework", CVPR 2021. https://arxiv.org/abs/2107.00181
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from lightning_kd.adapters import (FactorAutoencoder, check_splittable, example_factor, factor_channels_of,
                                   factor_encoder, split_channels)
from lightning_kd.base import NetSpec
from lightning_kd.features import NetOutput, check_4d
from lightning_kd.losses import exploration_loss, inheritance_loss
from lightning_kd.mutual import MutualLearning, mutual_losses


class IEDML(MutualLearning):
    """IE-DML: each peer inherits from, and explores away from, the other peers' compact factors.

    "Revisiting Knowledge Distillation: An Inheritance and Exploration Framework"
    (Huang et al., CVPR 2021), https://arxiv.org/abs/2107.00181, applied to
    "Deep Mutual Learning" (Zhang et al., CVPR 2018), https://arxiv.org/abs/1706.00384.

    Every peer ``i`` has, on its feature layer ``layers[i]`` (``C_i`` channels, split in halves):

    - its own :class:`~lightning_kd.adapters.FactorAutoencoder`, whose encoder output is
      peer ``i``'s compact factor, the knowledge the *other* peers inherit from;
    - for every other peer ``j``, an inheritance and an exploration encoder
      (:func:`~lightning_kd.adapters.factor_encoder`) that map the first and the second
      channel half of its feature into peer ``j``'s factor shape.

    Peer ``i``'s unweighted losses (names as logged under ``train/peer{i}/``):

    - ``ce``: cross-entropy with the labels; ``kl``: DML's mean KL to the other peers' detached
      predictions (set ``kl_weight: 0`` for IE terms only);
    - ``inh`` / ``exp``: mean over ``j != i`` of :func:`inheritance_loss` /
      :func:`exploration_loss` between peer ``i``'s inheritance / exploration factor and peer
      ``j``'s factor, which is detached (computed with batch statistics, running statistics
      untouched, as DML computes the other peers' logits). Peer ``j`` shows its factor with its
      logits (:meth:`shared_output`), so under ``placement: peer_parallel`` the factor is computed
      on peer ``j``'s process, where its autoencoder is, and travels in the same all-gather;
    - ``recon``: the reconstruction error (``reconstruction``) of peer ``i``'s autoencoder on its
      own feature.

    The autoencoders train *jointly*, not in a first stage: the peers start from scratch, so an
    autoencoder fitted up front would describe random features that training then leaves
    behind. Each one learns on its own peer's turn, on the detached feature, so the
    reconstruction shapes the factor space but never pulls the peer's representation towards
    what is easy to reconstruct. The peer, its autoencoder and its encoders share one optimizer
    (see :meth:`peer_modules`), so under :class:`lightning_kd.callbacks.MutualAlternation` they all change
    only on the peer's turn, and under DDP their gradients and BatchNorm statistics are averaged
    like the peer's. With ``mode: step`` a later peer inherits from the factors of the peers
    that already stepped on the batch, recomputed from their refreshed features.

    Args:
        peers: two or more network specs (peer 0 is the student).
        layers: dotted name of the layer to split in each peer: one name for all peers, or one
            per peer; ``None``: each peer's last stage (``stage_names[-1]``). Each must have an
            even number of channels.
        factor_rate: factor channels of each autoencoder as a fraction of its layer's channels.
        reconstruction: the autoencoders' error, ``"l1"`` (default, the IE-KD authors') or ``"mse"``.
        inheritance_weight: weight of ``inh``.
        exploration_weight: weight of ``exp``.
        reconstruction_weight: weight of ``recon`` (it only trains the autoencoders).
        ce_weight: weight of the cross-entropy.
        kl_weight: weight of DML's KL term.
        **kwargs: ``schedule`` and ``placement`` (see :class:`~lightning_kd.methods.DML`), ``num_classes``,
            ``input_shape``, ``optimizer``, ``lr_scheduler`` (see :class:`~lightning_kd.base.StudentModule`).
    """

    def __init__(self, peers: list[NetSpec], layers: Optional[Union[str, list[str]]] = None,
                 factor_rate: float = 0.5, reconstruction: str = "l1", inheritance_weight: float = 1.0,
                 exploration_weight: float = 1.0, reconstruction_weight: float = 1.0, ce_weight: float = 1.0,
                 kl_weight: float = 1.0, **kwargs):
        super().__init__(peers=peers, **kwargs)
        self.layers = self.resolve_layers(layers)
        feats = []
        for i, (layer, features) in enumerate(zip(self.layers, self.watch_peer_layers(self.layers))):
            check_4d(features, f"peer {i}")
            check_splittable(features[layer], layer, f"peer {i}")
            feats.append(features[layer])
        self.autoencoders = nn.ModuleList(
            FactorAutoencoder(f.shape[1], factor_channels_of(f.shape[1], factor_rate), reconstruction) for f in feats)
        factors = [example_factor(ae, f) for ae, f in zip(self.autoencoders, feats)]
        # inheritance_encoders[i][str(j)]: peer i's first channel half -> peer j's factor shape.
        self.inheritance_encoders = nn.ModuleList(self.encoders_of(i, 0, feats, factors) for i in range(len(feats)))
        self.exploration_encoders = nn.ModuleList(self.encoders_of(i, 1, feats, factors) for i in range(len(feats)))
        self.loss_weights = {"ce": ce_weight, "kl": kl_weight, "inh": inheritance_weight, "exp": exploration_weight,
                             "recon": reconstruction_weight}

    def resolve_layers(self, layers: Optional[Union[str, list[str]]]) -> list[str]:
        if layers is None:
            names = [getattr(peer, "stage_names", [None])[-1] for peer in self.peers]
            missing = [i for i, name in enumerate(names) if name is None]
            if missing:
                raise ValueError(f"peers {missing} have no `stage_names`: set `layers` to one dotted "
                                 f"module name per peer.")
            return names
        if isinstance(layers, str):
            return [layers] * len(self.peers)
        if len(layers) != len(self.peers):
            raise ValueError(f"`layers` names one layer per peer: got {len(layers)} names for "
                             f"{len(self.peers)} peers; give {len(self.peers)} names, or one name for all.")
        return list(layers)

    @staticmethod
    def encoders_of(i: int, half: int, feats: list[Tensor], factors: list[Tensor]) -> nn.ModuleDict:
        part = split_channels(feats[i])[half]
        return nn.ModuleDict({str(j): factor_encoder(part, factor) for j, factor in enumerate(factors) if j != i})

    def peer_modules(self, i: int) -> list[nn.Module]:
        return [self.peers[i], self.autoencoders[i], self.inheritance_encoders[i], self.exploration_encoders[i]]

    @torch.no_grad()
    def factor(self, j: int, output: NetOutput) -> Tensor:
        """Peer ``j``'s factor of its (detached) output: batch statistics, running statistics left as they are."""
        autoencoder = self.autoencoders[j]
        with self.buffers_kept(autoencoder):
            return autoencoder.encoder(output.features[self.layers[j]])

    def shared_output(self, i: int, output: NetOutput) -> NetOutput:
        """Peer ``i``'s logits and its factor (``features["factor"]``), the target of the other peers."""
        return NetOutput(output.logits, {"factor": self.factor(i, output)})

    def peer_losses(self, i, output, others, batch):
        losses = mutual_losses(output, others, batch.y)
        feat = output.features[self.layers[i]]
        inherit, explore = split_channels(feat)
        inh, exp = [], []
        for j, other in others.items():
            target = other.features["factor"]
            inh.append(inheritance_loss(self.inheritance_encoders[i][str(j)](inherit), target))
            exp.append(exploration_loss(self.exploration_encoders[i][str(j)](explore), target))
        losses.update(inh=torch.stack(inh).mean(), exp=torch.stack(exp).mean(),
                      recon=self.autoencoders[i].reconstruction_error(feat.detach()))
        return losses
