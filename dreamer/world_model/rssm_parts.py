"""The sub-networks inside TorchRL's ``RSSMPriorV3``/``RSSMPosteriorV3``, for the fast filter.

TorchRL's cells compute one step from concatenated inputs, so a sequence filter built on their
``forward`` repeats work whose inputs are known before the loop (the action projection, the
observation half of the posterior's first layer) and runs the prior head and a discarded prior
sample at every step. :mod:`dreamer.world_model.rssm_step` recomposes the same maths from the
sub-networks instead; :func:`rssm_parts` is the one place that reads them out of TorchRL's
cells (``tests/test_rssm_parts.py`` pins that the recomposition equals the cells' ``forward``).
Nothing is re-registered: every parameter stays the cell's own tensor, so state dicts, optimizer
groups and checkpoints are unchanged. One weight is read in a second layout: the block GRU's hidden
layer is split by input (see :class:`PriorParts`), and its shared-features part is copied into a
dense linear weight, differentiably, at every :func:`rssm_parts` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrl.modules import RSSMPosteriorV3, RSSMPriorV3


def torchrl_rms_norm_eps(module: nn.Module) -> float | None:
    """The epsilon of TorchRL's DreamerV3 RMS norm, or ``None`` for any other module.

    That norm (``x * rsqrt(mean(x^2) + eps) * weight``) is a private TorchRL class; this is the
    one place that recognises it and reads its ``eps``, so the fused kernel
    (:mod:`dreamer.world_model.fused_norm`) can replace it. ``tests/test_fused_norm.py`` pins
    that the module computes exactly that.
    """
    from torchrl.modules.models.model_based import _DreamerV3RMSNorm

    return float(module.eps) if isinstance(module, _DreamerV3RMSNorm) else None


@dataclass(frozen=True)
class PriorParts:
    """The block GRU and prior head of an ``RSSMPriorV3(recurrent_model="block_gru")``."""

    belief_projection: nn.Module
    state_projection: nn.Module
    action_projection: nn.Module
    # The hidden block-linear layer reads cat([belief block b, features]) in block b. Split by
    # input, it is a block-diagonal layer on the belief (a view [blocks, deter / blocks, out]) plus
    # one dense layer on the features every block shares ([blocks * out, features], a copy):
    # the same sums without copying the features once per block.
    hidden_belief_weight: torch.Tensor
    hidden_features_weight: torch.Tensor
    hidden_bias: torch.Tensor  # [blocks * out], the features layer's bias
    hidden_rest: nn.Module  # the RMS norm and SiLU after the hidden block-linear layer
    gates_weight: torch.Tensor  # block-linear weight [blocks, deter / blocks, 3 * deter / blocks]
    gates_bias: torch.Tensor
    num_blocks: int
    deter: int
    action_dim: int
    head: nn.Module
    num_categoricals: int
    num_classes: int
    unimix: float


@dataclass(frozen=True)
class PosteriorParts:
    """An ``RSSMPosteriorV3``'s first linear layer split by input, and the layers after it."""

    belief_weight: torch.Tensor
    embed_weight: torch.Tensor
    bias: torch.Tensor | None
    rest: nn.Module
    num_categoricals: int
    num_classes: int
    unimix: float


@dataclass(frozen=True)
class RSSMParts:
    """What :func:`rssm_parts` reads out of the two cells (``posterior`` only when given one)."""

    prior: PriorParts
    posterior: PosteriorParts | None


def rssm_parts(prior: RSSMPriorV3, posterior: RSSMPosteriorV3 | None = None) -> RSSMParts:
    """Read the sub-networks out of TorchRL's V3 cells (block-GRU prior with one hidden layer).

    The block-linear layers are read as their weight and bias, so the step can fold the bias into
    the batched matmul. The posterior's first layer reads ``cat([belief, embed])``; its weight is
    split into the belief and embedding columns as views of the same parameter.
    """
    if prior.recurrent_model != "block_gru":
        raise ValueError(f"the fast RSSM needs a block_gru prior, got {prior.recurrent_model!r}")
    rnn = prior.rnn
    if len(rnn.hidden_layers) != 3:
        raise ValueError("the fast RSSM needs a block GRU with one hidden layer (num_layers=1)")
    hidden = rnn.hidden_layers[0].weight  # [blocks, deter / blocks + features, out]
    block_deter = prior.rnn_hidden_dim // rnn.num_blocks
    prior_parts = PriorParts(
        belief_projection=rnn.belief_projection,
        state_projection=rnn.state_projection,
        action_projection=rnn.action_projection,
        hidden_belief_weight=hidden[:, :block_deter],
        hidden_features_weight=hidden[:, block_deter:]
        .transpose(1, 2)
        .reshape(-1, hidden.shape[1] - block_deter),
        hidden_bias=rnn.hidden_layers[0].bias,
        hidden_rest=rnn.hidden_layers[1:],
        gates_weight=rnn.gates.weight,
        gates_bias=rnn.gates.bias,
        num_blocks=rnn.num_blocks,
        deter=prior.rnn_hidden_dim,
        action_dim=rnn.action_projection[0].in_features,
        head=prior.rnn_to_prior_projector,
        num_categoricals=prior.num_categoricals,
        num_classes=prior.num_classes,
        unimix=prior.unimix,
    )
    if posterior is None:
        return RSSMParts(prior_parts, None)
    layers = posterior.obs_rnn_to_post_projector
    first = layers[0]
    deter = prior.rnn_hidden_dim
    if not isinstance(first, nn.Linear) or first.in_features <= deter:
        raise ValueError("the posterior's first layer must be a Linear on cat([belief, embed])")
    posterior_parts = PosteriorParts(
        belief_weight=first.weight[:, :deter],
        embed_weight=first.weight[:, deter:],
        bias=first.bias,
        rest=layers[1:],
        num_categoricals=posterior.num_categoricals,
        num_classes=posterior.num_classes,
        unimix=posterior.unimix,
    )
    return RSSMParts(prior_parts, posterior_parts)
