"""Posterior filtering of replayed sequences through the RSSM, with resets at segment starts.

Why not TorchRL's ``RSSMRolloutV3``: it zeroes state, belief *and the action* on an ``is_init``
row, then encodes the *next* observation. The acting filter (``RSSMStateEstimatorV3``) instead
starts an episode from ``h0 = GRU(0, 0, 0)`` and ``z0 = q(h0, enc(x0))`` and then feeds the real
first action. Training with the rollout therefore drops ``x0`` and ``a0`` and sees every episode
one step late, a mismatch with what the policy sees when it acts. :func:`observe_sequence` starts
every segment exactly as the acting filter starts an episode, so the two paths agree (a test pins
this), and a segment start is any ``is_init`` row: a real episode start or a join between two
sampled slices that truncation and reshaping put in the same row. No state crosses such a join.

The filter is built from :mod:`dreamer.world_model.rssm_step` rather than the cells' ``forward``
so that everything that does not depend on the recurrence runs once on all ``T`` steps: the
action branch of the GRU and the embedding half of the posterior's first layer before the loop,
the prior head after it (the filter never samples the prior), and all latent-sample noise in one
draw. On a GPU the update is bound by its number of kernels (docs/benchmarks.md), and this takes
several per step out of the 64-step chain and its backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchrl.modules import RSSMPosteriorV3, RSSMPriorV3

from dreamer.world_model.belief_branch import belief_branch
from dreamer.world_model.deferred_grads import DeferredLayers, compute_dtype, worth_deferring
from dreamer.world_model.filter_cut import active_cut
from dreamer.world_model.gru_features import gru_features
from dreamer.world_model.rssm_parts import rssm_parts
from dreamer.world_model.rssm_step import (
    FilterBelief,
    action_features,
    belief_products,
    embed_term,
    filter_gru_step,
    gru_layers,
    gru_norms,
    initial_belief,
    posterior_layers,
    posterior_logits,
    posterior_norms,
    prior_logits,
)
from dreamer.world_model.sampling import race_noise, sample_carried, straight_through_sample


def observe_sequence(
    prior: RSSMPriorV3,
    posterior: RSSMPosteriorV3,
    embed_root: torch.Tensor,
    embed_next: torch.Tensor,
    action: torch.Tensor,
    is_init: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Filter ``[B, T]`` sequences in TorchRL's layout (row ``t``: ``x_t``, ``a_t``, ``x_{t+1}``).

    Args:
        prior, posterior: the RSSM cells.
        embed_root: encoder output for ``x_t``, ``[B, T, E]`` (used only on segment starts).
        embed_next: encoder output for ``x_{t+1}``, ``[B, T, E]``.
        action: ``a_t``, ``[B, T, A]``.
        is_init: ``[B, T]`` or ``[B, T, 1]`` bool; row 0 is always treated as a segment start.
        noise: the latent samples' :func:`~dreamer.world_model.sampling.race_noise`,
            ``[2, B, T, C, K]`` (``[0]``: segment-start states, ``[1]``: the filtered states);
            drawn here when not given.

    Returns:
        ``prior_logits`` / ``posterior_logits`` ``[B, T, C, K]``, ``state`` ``[B, T, C*K]`` and
        ``belief`` ``[B, T, deter]`` for step ``t + 1``.
    """
    parts = rssm_parts(prior, posterior)
    cell, post = parts.prior, parts.posterior
    batch, steps = action.shape[:2]
    if noise is None:
        noise = race_noise((2, batch, steps, post.num_categoricals, post.num_classes), embed_next)
    h0 = initial_belief(cell, embed_next)
    # One batched posterior call gives the segment-start state for every row at once.
    z0_logits = posterior_logits(post, h0, embed_term(post, embed_root))
    z0 = straight_through_sample(z0_logits, post.unimix, noise[0]).flatten(-2)
    # Inputs of every step, computed for all steps at once; unbind (not indexing) so the
    # backward pass gathers each one's gradient with one stack instead of a copy per step.
    # The GRU's features of every step in one buffer the projections write into (no
    # concatenation per step), the action's columns filled here for all steps.
    features = gru_features(cell, embed_next, (batch, steps))
    action_columns = None if features is None else features.columns(2)
    step_actions = action_features(cell, action, out=action_columns).unbind(1)
    step_embeds = embed_term(post, embed_next).unbind(1)
    step_noise = noise[1].unbind(1)

    deferred = None
    # Weight gradients of the loop's layers: one matmul each after the loop's backward.
    # (the action branch runs before the loop, on all steps at once)
    layers = gru_layers(cell, with_action=False) + posterior_layers(post)
    if worth_deferring(batch, layers):
        norms = gru_norms(cell, with_action=False) + posterior_norms(post)
        deferred = DeferredLayers(layers, compute_dtype(embed_next), norms)
        # Every step depends on these (segment starts are mixed in below).
        h0, z0 = deferred.anchor(h0, z0)
    # Each step's kernels also write the next step's input: z0/h0 where the next row starts a
    # segment, the carried state elsewhere, as x * keep + start_value (exact in both cases;
    # a separate addcmul per step, or a where(), costs kernels each way). Row 0 always starts a
    # segment, so z0 and h0 are its inputs; the last step's carry is never read.
    following = F.pad(is_init.reshape(batch, steps, 1)[:, 1:].to(z0.dtype), (0, 0, 0, 1))
    keep = (1 - following).unbind(1)
    start_states = (F.pad(z0[:, 1:], (0, 0, 0, 1)) * following).unbind(1)
    start_beliefs = (h0 * following).unbind(1)
    # Each tensor a step hands on has one reader (the kernels write a copy per reader, in the
    # matmuls' dtype where they read it), so autograd adds and casts no gradients between steps.
    copy_dtype = compute_dtype(embed_next) or h0.dtype
    state, belief = z0[:, 0], FilterBelief(*[h0.expand(batch, -1)] * 3)
    # The two products of each carried belief run on a stream of their own beside the chain
    # (dreamer/world_model/belief_branch.py), launched as soon as the belief is written.
    branch = belief_branch(embed_next, "filter")
    products = belief_products(cell, belief, deferred)
    post_logits, states, beliefs = [], [], []
    for t in range(steps):
        branch.join()
        belief, belief_read, next_belief = filter_gru_step(
            cell,
            state,
            belief,
            step_actions[t],
            keep[t],
            start_beliefs[t],
            deferred,
            copy_dtype,
            None if features is None else features.step(t),
            products,
        )
        if t + 1 < steps:  # the last step's carried belief is never read
            with branch.ahead(next_belief.projection, next_belief.own) as made:
                products = belief_products(cell, next_belief, deferred)
                made.extend((products.projection, products.own))
        logits = posterior_logits(post, belief_read, step_embeds[t], deferred)
        state, next_state, logits = sample_carried(
            logits, post.unimix, step_noise[t], keep[t], start_states[t], copy_dtype
        )
        post_logits.append(logits)
        states.append(state)
        beliefs.append(belief)
        state, belief = next_state, next_belief
    outputs = [torch.stack(x, 1) for x in (post_logits, states, beliefs)]
    # Inside an update, what reads the filter's outputs (the prior head included) is cut off
    # from the loop, so its backward can run early (dreamer/world_model/filter_cut.py).
    if (cut := active_cut()) is not None:
        outputs = [cut.cut(x) for x in outputs]
    post_logits, state, belief = outputs
    return {
        "prior_logits": prior_logits(cell, belief),
        "posterior_logits": post_logits,
        "state": state,
        "belief": belief,
    }


def prior_where_next_obs_invalid(
    outputs: dict[str, torch.Tensor], valid: torch.Tensor, unimix: float
) -> dict[str, torch.Tensor]:
    """Use the prior at rows whose ``x_{t+1}`` is not the true observation.

    Where an env cannot give the final observation of an episode (``final_obs_valid`` False),
    ``x_{t+1}`` is the next episode's first one. Such a row ends its episode, so the next row
    restarts the filter and the row's state reaches only its own heads and KL: taking the state
    from the prior there (and the posterior logits equal to the prior's, a KL of zero) keeps the
    reset observation out of the model without touching the recurrence.

    Args:
        outputs: :func:`observe_sequence`'s result.
        valid: ``[B, T]`` or ``[B, T, 1]`` bool, False where ``x_{t+1}`` is not the true one.
        unimix: the prior's uniform mixture weight.
    """
    prior = outputs["prior_logits"]
    keep = valid.reshape(*prior.shape[:2], 1, 1)
    prior_state = straight_through_sample(prior, unimix, race_noise(prior.shape, prior))
    return {
        **outputs,
        "posterior_logits": torch.where(keep, outputs["posterior_logits"], prior),
        "state": torch.where(keep.flatten(-2), outputs["state"], prior_state.flatten(-2)),
    }
