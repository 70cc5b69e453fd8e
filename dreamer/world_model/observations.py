"""Which observations the world model reads (``model.obs_keys``), and how each is modelled.

``policy`` (the task's state vector) goes through the symlog MLP encoder and is reconstructed in
symlog space; ``pixels`` (uint8 ``[H, W, 3]`` camera images) goes through the CNN encoder and is
reconstructed on the ``pixels / 255`` scale. With several keys the embeddings are concatenated
and each key gets its own decoder and its own reconstruction term; TorchRL's
``DreamerV3ModelLoss`` sums the terms when its ``pixels``/``reco_pixels`` keys are lists.

With the default single key ``policy`` the encoder and decoder are the plain modules
(``encoder(obs) -> embed``, ``decoder(feature) -> reco``); the multi-key wrappers only appear when
more than one key is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchrl.data import Composite

from dreamer.world_model.networks import (
    ModelSize,
    make_decoder,
    make_encoder,
    make_image_decoder,
    make_image_encoder,
    symexp,
)

VECTOR_KEY = "policy"
PIXELS_KEY = "pixels"
KNOWN_OBS_KEYS = (VECTOR_KEY, PIXELS_KEY)


@dataclass(frozen=True)
class ReconstructionHead:
    """Where one observation's reconstruction target and prediction live under ``"next"``."""

    obs_key: str
    target_key: str
    reco_key: str


HEADS = {
    VECTOR_KEY: ReconstructionHead(VECTOR_KEY, "symlog_policy", "reco_symlog_policy"),
    # The loss divides the stored uint8 frames by 255 itself: no target copy is written.
    PIXELS_KEY: ReconstructionHead(PIXELS_KEY, PIXELS_KEY, "reco_pixels"),
}


def obs_keys_from_config(model_cfg) -> tuple[str, ...]:
    """``model.obs_keys`` as a checked tuple (default ``("policy",)``)."""
    keys = tuple(str(k) for k in model_cfg.get("obs_keys", [VECTOR_KEY]))
    unknown = [k for k in keys if k not in KNOWN_OBS_KEYS]
    if not keys or unknown or len(set(keys)) != len(keys):
        raise ValueError(
            f"model.obs_keys must be a non-empty list of distinct keys from {list(KNOWN_OBS_KEYS)}, "
            f"got {list(keys)}; e.g. model.obs_keys=[policy], [pixels] or [pixels,policy]."
        )
    return keys


class MultiEncoder(nn.Module):
    """Encodes several observations (in ``obs_keys`` order) and concatenates the embeddings."""

    def __init__(self, encoders: Sequence[nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)

    def forward(self, *observations: torch.Tensor) -> torch.Tensor:
        embeds = [enc(obs) for enc, obs in zip(self.encoders, observations, strict=True)]
        return torch.cat(embeds, -1)


class MultiDecoder(nn.Module):
    """One decoder per observation; returns their reconstructions as a tuple."""

    def __init__(self, decoders: Sequence[nn.Module]):
        super().__init__()
        self.decoders = nn.ModuleList(decoders)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(dec(feature) for dec in self.decoders)


def _obs_shape(observation_spec: Composite, key: str) -> tuple[int, ...]:
    if key not in observation_spec.keys():
        hint = " (set env.pixels=true)" if key == PIXELS_KEY else ""
        raise ValueError(f"model.obs_keys asks for {key!r}, which the env does not emit{hint}.")
    batch_dims = len(observation_spec.shape)
    return tuple(observation_spec[key].shape[batch_dims:])


def make_obs_encoder(
    obs_keys: Sequence[str], observation_spec: Composite, size: ModelSize
) -> tuple[nn.Module, int]:
    """The encoder of ``obs_keys`` and its embedding size (what the RSSM posterior reads)."""
    encoders, dims = [], []
    for key in obs_keys:
        shape = _obs_shape(observation_spec, key)
        if key == PIXELS_KEY:
            encoder = make_image_encoder(shape, size)
            dims.append(encoder.out_features)
        else:
            encoder = make_encoder(shape[-1], size)
            dims.append(size.units)
        encoders.append(encoder)
    if len(encoders) == 1:
        return encoders[0], dims[0]
    return MultiEncoder(encoders), sum(dims)


def make_obs_decoder(
    obs_keys: Sequence[str], observation_spec: Composite, size: ModelSize
) -> nn.Module:
    """The decoder(s) from the model state to each observation's reconstruction."""
    decoders = []
    for key in obs_keys:
        shape = _obs_shape(observation_spec, key)
        if key == PIXELS_KEY:
            decoders.append(make_image_decoder(shape, size))
        else:
            decoders.append(make_decoder(shape[-1], size))
    return decoders[0] if len(decoders) == 1 else MultiDecoder(decoders)


def as_tuple(reco: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A decoder's output as one tensor per observation key."""
    return reco if isinstance(reco, tuple) else (reco,)


def decoded_observation(key: str, reco: torch.Tensor) -> torch.Tensor:
    """A reconstruction in the observation's own units: raw ``policy`` or ``pixels`` in [0, 1]."""
    return reco.clamp(0.0, 1.0) if key == PIXELS_KEY else symexp(reco)
