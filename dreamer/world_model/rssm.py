"""Posterior filtering of replayed sequences through the RSSM, with resets at segment starts.

Why not TorchRL's ``RSSMRolloutV3``: it zeroes state, belief *and the action* on an ``is_init``
row, then encodes the *next* observation. The acting filter (``RSSMStateEstimatorV3``) instead
starts an episode from ``h0 = GRU(0, 0, 0)`` and ``z0 = q(h0, enc(x0))`` and then feeds the real
first action. Training with the rollout therefore drops ``x0`` and ``a0`` and sees every episode
one step late, a mismatch with what the policy sees when it acts. :func:`observe_sequence` starts
every segment exactly as the acting filter starts an episode, so the two paths agree (a test pins
this), and a segment start is any ``is_init`` row: a real episode start or a join between two
sampled slices that truncation and reshaping put in the same row. No state crosses such a join.
"""

from __future__ import annotations

import torch
from torchrl.modules import RSSMPosteriorV3, RSSMPriorV3


def initial_belief(
    prior: RSSMPriorV3, like: torch.Tensor, action_dim: int, stoch: int
) -> torch.Tensor:
    """``h0 = GRU(0, 0, 0)``: the belief at the first step of an episode, shape ``[1, deter]``."""
    zeros_state = like.new_zeros(1, stoch)
    zeros_belief = like.new_zeros(1, prior.rnn_hidden_dim)
    zeros_action = like.new_zeros(1, action_dim)
    _, _, belief = prior(zeros_state, zeros_belief, zeros_action)
    return belief


def observe_sequence(
    prior: RSSMPriorV3,
    posterior: RSSMPosteriorV3,
    embed_root: torch.Tensor,
    embed_next: torch.Tensor,
    action: torch.Tensor,
    is_init: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Filter ``[B, T]`` sequences in TorchRL's layout (row ``t``: ``x_t``, ``a_t``, ``x_{t+1}``).

    Args:
        prior, posterior: the RSSM cells.
        embed_root: encoder output for ``x_t``, ``[B, T, E]`` (used only on segment starts).
        embed_next: encoder output for ``x_{t+1}``, ``[B, T, E]``.
        action: ``a_t``, ``[B, T, A]``.
        is_init: ``[B, T]`` or ``[B, T, 1]`` bool; row 0 is always treated as a segment start.

    Returns:
        ``prior_logits`` / ``posterior_logits`` ``[B, T, C, K]``, ``state`` ``[B, T, C*K]`` and
        ``belief`` ``[B, T, deter]`` for step ``t + 1``.
    """
    batch, steps = action.shape[:2]
    reset = is_init.reshape(batch, steps, 1).clone()
    reset[:, 0] = True
    stoch = posterior.num_categoricals * posterior.num_classes
    h0 = initial_belief(prior, embed_next, action.shape[-1], stoch)
    # One batched posterior call gives the segment-start state for every row at once.
    _, z0 = posterior(h0.reshape(1, 1, -1).expand(batch, steps, -1), embed_root)
    h0 = h0.expand(batch, -1)

    state = z0[:, 0]
    belief = h0
    prior_logits, post_logits, states, beliefs = [], [], [], []
    for t in range(steps):
        start = reset[:, t]
        state = torch.where(start, z0[:, t], state)
        belief = torch.where(start, h0, belief)
        logits_prior, _, belief = prior(state, belief, action[:, t])
        logits_post, state = posterior(belief, embed_next[:, t])
        prior_logits.append(logits_prior)
        post_logits.append(logits_post)
        states.append(state)
        beliefs.append(belief)
    return {
        "prior_logits": torch.stack(prior_logits, 1),
        "posterior_logits": torch.stack(post_logits, 1),
        "state": torch.stack(states, 1),
        "belief": torch.stack(beliefs, 1),
    }
