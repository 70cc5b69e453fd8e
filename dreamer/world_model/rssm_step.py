"""One RSSM step recomposed from TorchRL's sub-networks, split so the filter can hoist work.

Each function is the matching piece of ``RSSMPriorV3``/``RSSMPosteriorV3.forward`` with the same
ops in the same order, except where a piece is split to run on every step at once:

* :func:`action_features` is the block GRU's action branch; it reads only the action, so the
  filter runs it on all ``T`` steps in one call;
* :func:`embed_term` is the embedding half of the posterior's first layer, plus its bias (one
  GEMM for all steps); :func:`posterior_logits` adds the belief half inside the loop. Splitting
  the sum reassociates it, so the logits agree with TorchRL's to float rounding, not bitwise;
* :func:`prior_logits` is the prior head; the filter needs no prior sample, so it runs once on
  all ``T`` beliefs after the loop.

``tests/test_rssm_parts.py`` checks every piece against TorchRL's ``forward``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dreamer.world_model import fused_ops
from dreamer.world_model.deferred_grads import DeferredLayers, block_input_grad, compute_dtype
from dreamer.world_model.fast_layers import (
    first_product,
    linear_layers,
    norm_scales,
    run_layer_pair,
    run_layers,
)
from dreamer.world_model.gru_features import GruFeatures
from dreamer.world_model.held_out_casts import compute_weight
from dreamer.world_model.rssm_parts import PosteriorParts, PriorParts
from dreamer.world_model.sampling import race_noise, straight_through_sample

# TorchRL's block GRU adds this to the update gate's pre-activation (DreamerV3's value).
UPDATE_BIAS = -1.0


def action_features(
    parts: PriorParts,
    action: torch.Tensor,
    deferred: DeferredLayers | None = None,
    scaled: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The block GRU's action branch for actions of any leading shape: ``[..., A] -> [..., H]``.

    ``scaled``: ``action`` is already ``action / max(|action|, 1)`` (the fused actor sample
    writes it, :mod:`dreamer.actor_critic.fused_action`). ``out``: where the result goes (its
    columns of :class:`GruFeatures`).
    """
    if not action.is_floating_point():  # one-hot action specs give bool actions
        action = action.to(torch.get_default_dtype())
    if not scaled:
        action = action / action.detach().abs().clamp_min(1)
    return run_layers(parts.action_projection, action, deferred, out=out)


def block_linear(
    value: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    deferred: DeferredLayers | None = None,
    add_bias: bool = True,
) -> torch.Tensor:
    """TorchRL's block-linear layer, left block-major: ``[N, blocks * i] -> [blocks, N, o]``.

    The bias (if any) is added inside the batched matmul unless ``add_bias`` is False (the
    caller adds it; a deferred layer still computes its gradient), and moving the blocks back
    to ``[N, blocks * o]`` is left to the caller, which can often skip it.
    """
    blocks, _, block_out = weight.shape
    value = value.unflatten(-1, (blocks, -1)).transpose(0, 1)
    if deferred is not None and deferred.handles(weight):
        return deferred.block_linear(value, weight, add_bias)
    # Parameters in the activation dtype, as TorchRL does (a bf16 recurrence stays bf16), and
    # autocast's cast made here, so the matmul and its backward see one dtype.
    dtype = compute_dtype(value) or value.dtype
    value, weight = value.to(dtype), compute_weight(weight, dtype)
    if bias is not None and add_bias:
        bias = compute_weight(bias, dtype).view(blocks, 1, block_out)
    return _BlockLinear.apply(value, weight, bias if add_bias else None)


class _BlockLinear(torch.autograd.Function):
    """``baddbmm(bias, x, W)`` on a block-major view ``x`` of rows, whose input gradient is
    written in the rows' layout (:func:`~dreamer.world_model.deferred_grads.block_input_grad`):
    autograd's own is block-major, and the view's backward then copies it (2,048-wide beliefs
    of every imagined row at every step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        wants_x, wants_weight, wants_bias = ctx.needs_input_grad
        grad_x = block_input_grad(grad, weight) if wants_x else None
        grad_weight = torch.bmm(x.transpose(1, 2), grad) if wants_weight else None
        grad_bias = grad.sum(1, keepdim=True) if ctx.has_bias and wants_bias else None
        return grad_x, grad_weight, grad_bias


def linear(
    value: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    deferred: DeferredLayers | None = None,
) -> torch.Tensor:
    """``F.linear`` on ``[N, in]``, with the weight gradient left to ``deferred`` if it has it."""
    if deferred is not None and deferred.handles(weight):
        return deferred.linear(value, weight)
    return F.linear(value, compute_weight(weight, value.dtype), compute_weight(bias, value.dtype))


def _gru_stacks(parts: PriorParts, with_action: bool) -> list[nn.Sequential]:
    """The block GRU's ``Linear -> RMSNorm -> SiLU`` projections (the action one if asked)."""
    stacks = [parts.belief_projection, parts.state_projection]
    return [*stacks, parts.action_projection] if with_action else stacks


def gru_layers(
    parts: PriorParts, with_action: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The block GRU's per-step layers (weight, bias) that :class:`DeferredLayers` can take:
    the belief, state and (``with_action``) action projections and the two block-linear layers."""
    return [
        *(pair for stack in _gru_stacks(parts, with_action) for pair in linear_layers(stack)),
        (parts.hidden_belief_weight, None),
        (parts.hidden_features_weight, parts.hidden_bias),
        (parts.gates_weight, parts.gates_bias),
    ]


def gru_norms(parts: PriorParts, with_action: bool = True) -> list[torch.Tensor]:
    """The block GRU's fused norm scales (:func:`norm_scales`), in the order of :func:`gru_layers`."""
    stacks = [*_gru_stacks(parts, with_action), parts.hidden_rest]
    return [w for stack in stacks for w in norm_scales(stack)]


class FilterBelief(NamedTuple):
    """The belief a GRU step reads (the filter's, the dream's), as one tensor per reader: the GRU
    update's own ``h``, the hidden layer's block-diagonal matmul and the belief projection. The
    fused step writes a copy for each, so that their gradients reach its backward kernel separately instead of being
    summed (and cast) by autograd (:func:`~dreamer.world_model.fused_ops.gru_gate_update_carried`);
    elsewhere all three are the same tensor."""

    direct: torch.Tensor
    own: torch.Tensor
    projection: torch.Tensor


class BeliefProducts(NamedTuple):
    """What a loop runs of a GRU step ahead of it (:mod:`dreamer.world_model.belief_branch`):
    the step's two products of the belief alone, the belief projection's ``Linear`` output
    ``[N, units]`` and the hidden layer's block-diagonal product ``[blocks, N, hidden / blocks]``;
    and, once the state is known too, ``columns``: the belief and state projections written into
    their columns of the step's :class:`GruFeatures` (:func:`with_projection_columns`)."""

    projection: torch.Tensor | None
    own: torch.Tensor | None
    columns: tuple[torch.Tensor, torch.Tensor] | None = None


def belief_products(
    parts: PriorParts, belief: FilterBelief, deferred: DeferredLayers | None
) -> BeliefProducts:
    """:class:`BeliefProducts` of ``belief`` (2-D), as :func:`_gru_gates` would compute them."""
    return BeliefProducts(
        first_product(parts.belief_projection, belief.projection, deferred),
        block_linear(belief.own, parts.hidden_belief_weight, None, deferred),
    )


def with_projection_columns(
    parts: PriorParts,
    state: torch.Tensor,
    belief: FilterBelief,
    deferred: DeferredLayers | None,
    features: GruFeatures,
    products: BeliefProducts | None = None,
) -> BeliefProducts:
    """``products`` (of ``belief``; made here when None) with the ``columns`` of ``features``
    that the belief and state projections write (their two norms as one kernel each way)."""
    if products is None:
        products = BeliefProducts(None, None)
    columns = run_layer_pair(
        (parts.belief_projection, parts.state_projection),
        (belief.projection, state),
        (features.columns(0), features.columns(1)),
        deferred,
        first_products=(products.projection, None),
    )
    return products._replace(columns=columns)


def _gru_gates(
    parts: PriorParts,
    state: torch.Tensor,
    belief: torch.Tensor | FilterBelief,
    action_feature: torch.Tensor,
    deferred: DeferredLayers | None,
    add_gate_bias: bool,
    features: GruFeatures | None = None,
    products: BeliefProducts | None = None,
) -> torch.Tensor:
    """The block GRU's gate pre-activations ``[blocks, N, 3 g]`` for 2-D inputs.

    The hidden layer runs split by input (:class:`~dreamer.world_model.rssm_parts.PriorParts`):
    one matmul on the features all blocks share and a block-diagonal one on the belief, whose
    sum the norm after them reads (added inside the fused norm's kernel where it runs). With
    ``features``, the projections write into it (``action_feature`` already there). With
    ``products`` (:class:`BeliefProducts` of ``belief`` and ``state``, run ahead), what they
    hold is not run here.
    """
    if not isinstance(belief, FilterBelief):
        belief = FilterBelief(belief, belief, belief)
    if products is None:
        products = BeliefProducts(None, None)
    if features is None:
        projection = (
            run_layers(parts.belief_projection, belief.projection, deferred)
            if products.projection is None
            else run_layers(list(parts.belief_projection)[1:], products.projection, deferred)
        )
        features = torch.cat(
            [projection, run_layers(parts.state_projection, state, deferred), action_feature], -1
        )
    else:
        if products.columns is None:
            products = with_projection_columns(parts, state, belief, deferred, features, products)
        features = features.join([*products.columns, action_feature])
    shared = linear(features, parts.hidden_features_weight, parts.hidden_bias, deferred)
    own = products.own
    if own is None:
        own = block_linear(belief.own, parts.hidden_belief_weight, None, deferred)
    hidden = run_layers(parts.hidden_rest, shared, deferred, addend=own.transpose(0, 1))
    return block_linear(hidden, parts.gates_weight, parts.gates_bias, deferred, add_gate_bias)


def _kernel_gate_bias(parts: PriorParts, deferred: DeferredLayers | None) -> torch.Tensor:
    """The gate bias as the fused GRU kernel adds it: detached when ``deferred`` computes its
    gradient (from the gates' gradients, as for any deferred bias)."""
    bias = parts.gates_bias
    return bias.detach() if deferred is not None and deferred.handles(parts.gates_weight) else bias


def gru_step(
    parts: PriorParts,
    state: torch.Tensor,
    belief: torch.Tensor,
    action_feature: torch.Tensor,
    deferred: DeferredLayers | None = None,
) -> torch.Tensor:
    """Next belief ``[..., deter]`` from ``state``, ``belief`` and :func:`action_features`.

    The gate arithmetic runs on block-major views of the gate outputs, and the update
    ``u * c + (1 - u) * h`` is computed as ``h + u * (c - h)``: the same numbers up to rounding,
    in fewer kernels than TorchRL's flattened copies; on CUDA it is one Triton kernel each way,
    which also adds the gate layer's bias
    (:func:`~dreamer.world_model.fused_ops.gru_gate_update`). With ``deferred`` (made from
    :func:`gru_layers`), the layers' weight gradients are left to it.
    """
    leading = belief.shape[:-1]
    state, belief, action_feature = (x.flatten(0, -2) for x in (state, belief, action_feature))
    if fused_ops.use_fused(belief):
        gates = _gru_gates(parts, state, belief, action_feature, deferred, add_gate_bias=False)
        bias = _kernel_gate_bias(parts, deferred)
        return fused_ops.gru_gate_update(gates, belief, UPDATE_BIAS, bias).reshape(*leading, -1)
    return _unfused_gru_step(parts, state, belief, action_feature, deferred).reshape(*leading, -1)


def _unfused_gru_step(
    parts: PriorParts,
    state: torch.Tensor,
    belief: torch.Tensor,
    action_feature: torch.Tensor,
    deferred: DeferredLayers | None,
    products: BeliefProducts | None = None,
) -> torch.Tensor:
    """:func:`gru_step`'s torch path on ``[N, ...]`` rows, ``products`` as :func:`_gru_gates`'."""
    gates = _gru_gates(parts, state, belief, action_feature, deferred, True, products=products)
    grouped = belief.unflatten(-1, (parts.num_blocks, -1))
    gates = gates.transpose(0, 1)
    reset, candidate, update = gates.unflatten(-1, (3, -1)).unbind(-2)
    candidate = (reset.sigmoid() * candidate).tanh()
    update = (update + UPDATE_BIAS).sigmoid()
    return torch.addcmul(grouped, update, candidate - grouped).flatten(-2)


def filter_gru_step(
    parts: PriorParts,
    state: torch.Tensor,
    belief: FilterBelief,
    action_feature: torch.Tensor,
    keep: torch.Tensor,
    start: torch.Tensor,
    deferred: DeferredLayers | None,
    copy_dtype: torch.dtype,
    features: GruFeatures | None = None,
    products: BeliefProducts | None = None,
) -> tuple[torch.Tensor, torch.Tensor, FilterBelief]:
    """:func:`gru_step` on ``[N, ...]`` rows and the filter's next input ``start + next_belief *
    keep`` (``keep`` ``[N, 1]``: 0 where the next step starts a segment from ``start``, 1 where
    it carries the belief on), with a tensor for each reader: the next belief (for the stacked
    outputs), the same for the posterior's matmul (in ``copy_dtype``, the matmuls' dtype), and
    the carried belief as the next step's :class:`FilterBelief` (its matmul copies in
    ``copy_dtype``). Off the fused path, the same tensors several times. ``features``: as
    :func:`_gru_gates`' (with ``action_feature`` written into it), and ``products``
    (:func:`belief_products` of ``belief``, run ahead)."""
    if fused_ops.use_fused(belief.direct):
        gates = _gru_gates(
            parts, state, belief, action_feature, deferred, False, features, products
        )
        bias = _kernel_gate_bias(parts, deferred)
        out, out_copy, carried, own, projection = fused_ops.gru_gate_update_carried(
            gates, belief.direct, UPDATE_BIAS, bias, keep, start, copy_dtype
        )
        return out, out_copy, FilterBelief(carried, own, projection)
    following = _unfused_gru_step(parts, state, belief.direct, action_feature, deferred, products)
    carried = torch.addcmul(start, following, keep)
    return following, following, FilterBelief(carried, carried, carried)


def dream_gru_step(
    parts: PriorParts,
    state: torch.Tensor,
    belief: FilterBelief,
    action_feature: torch.Tensor,
    deferred: DeferredLayers | None,
    outputs: list[torch.Tensor],
    features: GruFeatures | None = None,
    products: BeliefProducts | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`gru_step` on ``[N, ...]`` rows (fused kernels only), the next belief written into
    each of ``outputs``, one per reader
    (:func:`~dreamer.world_model.fused_ops.gru_gate_update_into`); ``state`` is the tensor the
    state projection reads, ``belief`` one tensor per reader of the belief. ``features``: as
    :func:`_gru_gates`' (with ``action_feature`` written into it), and ``products``
    (:class:`BeliefProducts` of ``belief``, and with ``columns`` of ``state`` too, run ahead)."""
    gates = _gru_gates(parts, state, belief, action_feature, deferred, False, features, products)
    bias = _kernel_gate_bias(parts, deferred)
    return fused_ops.gru_gate_update_into(gates, belief.direct, UPDATE_BIAS, bias, outputs)


def initial_belief(parts: PriorParts, like: torch.Tensor) -> torch.Tensor:
    """``h0 = GRU(0, 0, 0)``: the belief at the first step of an episode, shape ``[1, deter]``."""
    stoch = parts.num_categoricals * parts.num_classes
    action = action_features(parts, like.new_zeros(1, parts.action_dim))
    return gru_step(parts, like.new_zeros(1, stoch), like.new_zeros(1, parts.deter), action)


def prior_logits(
    parts: PriorParts, belief: torch.Tensor, deferred: DeferredLayers | None = None
) -> torch.Tensor:
    """Prior logits ``[..., C, K]`` of beliefs ``[..., deter]``."""
    logits = run_layers(parts.head, belief, deferred)
    return logits.unflatten(-1, (parts.num_categoricals, parts.num_classes))


def embed_term(parts: PosteriorParts, embed: torch.Tensor) -> torch.Tensor:
    """The embedding half of the posterior's first layer, bias included: ``[..., E] -> [..., H]``."""
    return F.linear(embed, parts.embed_weight, parts.bias)


def posterior_layers(parts: PosteriorParts) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The posterior's per-step layers (weight, bias) that :class:`DeferredLayers` can take."""
    last = parts.rest[-1]
    return [(parts.belief_weight, None), (last.weight, last.bias)]


def posterior_norms(parts: PosteriorParts) -> list[torch.Tensor]:
    """The posterior's fused norm scales (:func:`norm_scales`)."""
    return norm_scales(parts.rest)


def posterior_logits(
    parts: PosteriorParts,
    belief: torch.Tensor,
    embedding_term: torch.Tensor,
    deferred: DeferredLayers | None = None,
) -> torch.Tensor:
    """Posterior logits ``[..., C, K]`` from a belief and the :func:`embed_term` of its embedding.

    With ``deferred`` (made from :func:`posterior_layers`; 2-D inputs), the layers' weight
    gradients are left to it.
    """
    if deferred is not None and deferred.handles(parts.belief_weight):
        # The embedding term is added by the fused norm's kernel where it runs.
        hidden = deferred.linear(belief, parts.belief_weight)
        return run_layers(parts.rest, hidden, deferred, addend=embedding_term).unflatten(
            -1, (parts.num_categoricals, parts.num_classes)
        )
    if belief.dim() == 2 and embedding_term.dim() == 2:
        hidden = torch.addmm(embedding_term, belief, parts.belief_weight.t())
    else:
        hidden = embedding_term + F.linear(belief, parts.belief_weight)
    return parts.rest(hidden).unflatten(-1, (parts.num_categoricals, parts.num_classes))


def imagine_step(
    parts: PriorParts,
    state: torch.Tensor,
    belief: torch.Tensor,
    action: torch.Tensor,
    deferred: DeferredLayers | None = None,
    scaled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One imagined step: the prior's sampled next state and its belief (``RSSMPriorV3.forward``).

    With ``deferred`` (made from :func:`gru_layers` and the prior head's layers), the layers'
    weight gradients are left to it. ``scaled``: as :func:`action_features`'."""
    action = action_features(parts, action, deferred, scaled)
    belief = gru_step(parts, state, belief, action, deferred)
    logits = prior_logits(parts, belief, deferred)
    sample = straight_through_sample(logits, parts.unimix, race_noise(logits.shape, logits))
    return sample.flatten(-2), belief
