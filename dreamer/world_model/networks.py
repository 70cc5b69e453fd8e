"""Builders for the world model's networks: MLP/CNN encoders and decoders, heads, RSSM cells.

All MLPs are TorchRL's ``DreamerV3MLP`` (Linear -> RMSNorm -> SiLU blocks, DreamerV3 init); the
heads that read the model state are its subclass ``SplitInputMLP``, which takes ``(state, belief)``
without concatenating them (:mod:`dreamer.world_model.split_input`). The image networks are TorchRL's ``DreamerV3ImageEncoder``/``DreamerV3ImageDecoder`` behind a
channel-last adapter. The RSSM cells are TorchRL's ``RSSMPriorV3`` (block GRU) and
``RSSMPosteriorV3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrl.modules import (
    DreamerV3ImageDecoder,
    DreamerV3ImageEncoder,
    DreamerV3MLP,
    RSSMPosteriorV3,
    RSSMPriorV3,
    SymExpTwoHot,
)

from dreamer.world_model.split_input import SplitInputMLP


@dataclass(frozen=True)
class ModelSize:
    """Sizes of every network; built from the ``model`` config group."""

    deter: int
    hidden: int
    units: int
    depth: int
    num_categoricals: int
    num_classes: int
    num_blocks: int
    num_bins: int = 255
    unimix: float = 0.01
    cnn_depth: int = 32
    cnn_mults: tuple[int, ...] = (2, 3, 4, 4)

    @property
    def stoch(self) -> int:
        """Flattened size of the categorical latent."""
        return self.num_categoricals * self.num_classes

    @property
    def feature(self) -> int:
        """Size of the model state ``[state, belief]`` read by every head."""
        return self.stoch + self.deter


def model_size_from_config(cfg) -> ModelSize:
    """Read a :class:`ModelSize` from the ``model`` config node and check it is usable."""
    size = ModelSize(
        deter=int(cfg.deter),
        hidden=int(cfg.hidden),
        units=int(cfg.units),
        depth=int(cfg.depth),
        num_categoricals=int(cfg.num_categoricals),
        num_classes=int(cfg.num_classes),
        num_blocks=int(cfg.num_blocks),
        num_bins=int(cfg.get("num_bins", 255)),
        unimix=float(cfg.get("unimix", 0.01)),
        cnn_depth=int(cfg.get("cnn_depth", 32)),
        cnn_mults=tuple(int(m) for m in cfg.get("cnn_mults", (2, 3, 4, 4))),
    )
    names = ("deter", "hidden", "units", "depth", "num_categoricals", "num_classes", "cnn_depth")
    for name in names:
        if getattr(size, name) <= 0:
            raise ValueError(f"model.{name} must be a positive integer, got {getattr(size, name)}")
    if size.deter % size.num_blocks or size.hidden % size.num_blocks:
        raise ValueError(
            f"model.deter ({size.deter}) and model.hidden ({size.hidden}) must be divisible by "
            f"model.num_blocks ({size.num_blocks}); change one of them."
        )
    if not size.cnn_mults or min(size.cnn_mults) <= 0:
        raise ValueError(f"model.cnn_mults must be positive integers, got {list(size.cnn_mults)}")
    return size


class SymlogEncoder(nn.Module):
    """Observation encoder: ``symlog`` then an MLP (DreamerV3 for vector observations)."""

    def __init__(self, obs_dim: int, size: ModelSize):
        super().__init__()
        self.mlp = DreamerV3MLP(obs_dim, None, depth=size.depth, num_cells=size.units)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mlp(symlog(obs))


def symlog(x: torch.Tensor) -> torch.Tensor:
    """Sign-preserving log compression used for inputs and regression targets."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def make_encoder(obs_dim: int, size: ModelSize) -> SymlogEncoder:
    """MLP encoder of the ``policy`` observation; its output size is ``size.units``."""
    return SymlogEncoder(obs_dim, size)


def make_decoder(obs_dim: int, size: ModelSize) -> DreamerV3MLP:
    """Decoder from the model state to the observation in symlog space."""
    return DreamerV3MLP(size.feature, obs_dim, depth=size.depth, num_cells=size.units)


class ImageEncoder(nn.Module):
    """Channel-last uint8 images ``[..., H, W, C]`` (the env's ``pixels``) -> embedding.

    TorchRL's ``DreamerV3ImageEncoder`` reads channel-first images; Isaac Lab's tiled camera and
    the embedded camera write channel-last ones, so this adapter only moves the channel axis.
    """

    def __init__(self, image_shape: tuple[int, int, int], size: ModelSize):
        super().__init__()
        height, width, channels = image_shape
        self.cnn = DreamerV3ImageEncoder(channels, depth=size.cnn_depth, mults=size.cnn_mults)
        self.out_features = self.cnn.output_features((channels, height, width))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.cnn(pixels.movedim(-1, -3))


class ImageDecoder(nn.Module):
    """Model state -> channel-last image ``[..., H, W, C]`` on the ``pixels / 255`` scale."""

    def __init__(self, image_shape: tuple[int, int, int], size: ModelSize):
        super().__init__()
        height, width, channels = image_shape
        projection = size.cnn_depth * size.cnn_mults[-1] * height * width
        projection //= 4 ** len(size.cnn_mults)
        blocks = size.num_blocks
        if size.feature % blocks or projection % blocks:
            blocks = 1
        self.cnn = DreamerV3ImageDecoder(
            size.feature,
            (channels, height, width),
            depth=size.cnn_depth,
            mults=size.cnn_mults,
            num_blocks=blocks,
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.cnn(feature).movedim(-3, -1)


def check_image_shape(image_shape: tuple[int, ...], size: ModelSize) -> None:
    """Reject images the CNNs cannot mirror, naming the setting to change."""
    if len(image_shape) != 3:
        raise ValueError(f"pixels must be [H, W, C] per env, got {tuple(image_shape)}")
    factor = 2 ** len(size.cnn_mults)
    height, width = image_shape[:2]
    if height % factor or width % factor:
        raise ValueError(
            f"env.camera height/width ({height}x{width}) must be multiples of 2 ** "
            f"len(model.cnn_mults) = {factor}; change env.camera.height/width or model.cnn_mults."
        )


def make_image_encoder(image_shape: tuple[int, int, int], size: ModelSize) -> ImageEncoder:
    """CNN encoder of the ``pixels`` observation; its output size is ``.out_features``."""
    check_image_shape(image_shape, size)
    return ImageEncoder(image_shape, size)


def make_image_decoder(image_shape: tuple[int, int, int], size: ModelSize) -> ImageDecoder:
    """Transposed-CNN decoder from the model state to ``pixels / 255``."""
    check_image_shape(image_shape, size)
    return ImageDecoder(image_shape, size)


def make_reward_head(size: ModelSize) -> SplitInputMLP:
    """Reward head: logits over ``num_bins`` symexp two-hot bins, zero-initialised output."""
    return SplitInputMLP(
        size.feature, size.num_bins, depth=size.depth, num_cells=size.units, outscale=0.0
    )


def make_continue_head(size: ModelSize) -> SplitInputMLP:
    """Continue head: one Bernoulli logit for 'the episode goes on'."""
    return SplitInputMLP(size.feature, 1, depth=size.depth, num_cells=size.units)


def make_two_hot(size: ModelSize) -> SymExpTwoHot:
    """Decoder from two-hot logits to a scalar (reward and value)."""
    return SymExpTwoHot(size.num_bins)


def make_rssm_cells(
    action_dim: int, size: ModelSize, embed_dim: int | None = None
) -> tuple[RSSMPriorV3, RSSMPosteriorV3]:
    """The RSSM's prior (block GRU + prior head) and posterior, from TorchRL's DreamerV3 classes.

    ``embed_dim`` is the encoder's output size (``size.units``, the MLP encoder's, by default).
    """
    prior = RSSMPriorV3(
        action_shape=(action_dim,),
        action_dim=action_dim,
        hidden_dim=size.hidden,
        rnn_hidden_dim=size.deter,
        num_categoricals=size.num_categoricals,
        num_classes=size.num_classes,
        recurrent_model="block_gru",
        num_blocks=size.num_blocks,
        unimix=size.unimix,
    )
    posterior = RSSMPosteriorV3(
        hidden_dim=size.hidden,
        rnn_hidden_dim=size.deter,
        obs_embed_dim=size.units if embed_dim is None else embed_dim,
        num_categoricals=size.num_categoricals,
        num_classes=size.num_classes,
        use_rms_norm=True,
        unimix=size.unimix,
    )
    return prior, posterior
