"""The recomposed RSSM pieces compute what TorchRL's ``RSSMPriorV3``/``RSSMPosteriorV3`` compute.

These pin the one place that reads TorchRL's sub-networks (:func:`rssm_parts`): if TorchRL changes
its cells, these fail instead of the filter silently computing something else.
"""

from __future__ import annotations

import pytest
import torch
from torchrl.modules import RSSMPriorV3

from dreamer.imagination.model_env import PriorStep
from dreamer.world_model.networks import ModelSize, make_rssm_cells
from dreamer.world_model.rssm_parts import rssm_parts
from dreamer.world_model.rssm_step import (
    action_features,
    embed_term,
    gru_step,
    initial_belief,
    posterior_logits,
    prior_logits,
)

SIZE = ModelSize(
    deter=24, hidden=12, units=10, depth=1, num_categoricals=4, num_classes=5, num_blocks=3
)
ACTION_DIM = 3


def _cells():
    torch.manual_seed(0)
    prior, posterior = make_rssm_cells(ACTION_DIM, SIZE)
    # Non-zero biases, so a bias dropped or added twice shows.
    with torch.no_grad():
        for name, value in [*prior.named_parameters(), *posterior.named_parameters()]:
            if name.endswith("bias"):
                value.normal_()
    return prior, posterior


def _inputs(batch: int = 7):
    torch.manual_seed(1)
    state = torch.softmax(torch.randn(batch, SIZE.num_categoricals, SIZE.num_classes), -1)
    return (
        state.flatten(-2),
        torch.randn(batch, SIZE.deter),
        torch.randn(batch, ACTION_DIM) * 2,  # some entries beyond 1: the action normalisation acts
        torch.randn(batch, SIZE.units),
    )


def test_prior_pieces_match_the_prior_cell():
    prior, posterior = _cells()
    state, belief, action, _ = _inputs()
    expected_logits, _, expected_belief = prior(state, belief, action)
    parts = rssm_parts(prior, posterior).prior
    got_belief = gru_step(parts, state, belief, action_features(parts, action))
    torch.testing.assert_close(got_belief, expected_belief, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        prior_logits(parts, got_belief), expected_logits, rtol=1e-6, atol=1e-6
    )


def test_actions_for_all_steps_at_once_match_step_by_step():
    prior, _ = _cells()
    parts = rssm_parts(prior).prior
    actions = torch.randn(4, 6, ACTION_DIM) * 2
    batched = action_features(parts, actions)
    for t in range(actions.shape[1]):
        torch.testing.assert_close(
            batched[:, t], action_features(parts, actions[:, t]), rtol=1e-6, atol=1e-6
        )


def test_initial_belief_is_the_prior_cell_on_zeros():
    prior, _ = _cells()
    zeros = torch.zeros(1, SIZE.stoch), torch.zeros(1, SIZE.deter), torch.zeros(1, ACTION_DIM)
    _, _, expected = prior(*zeros)
    torch.testing.assert_close(
        initial_belief(rssm_parts(prior).prior, torch.zeros(1)), expected, rtol=1e-6, atol=1e-6
    )


def test_split_posterior_layer_matches_the_posterior_cell():
    prior, posterior = _cells()
    _, belief, _, embed = _inputs()
    expected, _ = posterior(belief, embed)
    parts = rssm_parts(prior, posterior).posterior
    got = posterior_logits(parts, belief, embed_term(parts, embed))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # The broadcast form (one belief for a [B, T] grid of embeddings) used for segment starts.
    grid = embed.reshape(7, 1, -1).expand(7, 2, -1)
    expected_grid, _ = posterior(belief[:1].expand(7, 2, -1), grid)
    got_grid = posterior_logits(parts, belief[:1], embed_term(parts, grid))
    torch.testing.assert_close(got_grid, expected_grid, rtol=1e-6, atol=1e-6)


def test_parts_are_the_cells_own_parameters():
    prior, posterior = _cells()
    parts = rssm_parts(prior, posterior)
    first = posterior.obs_rnn_to_post_projector[0].weight
    assert parts.posterior.belief_weight.data_ptr() == first.data_ptr()
    assert parts.posterior.embed_weight.untyped_storage().data_ptr() == first.data_ptr()
    assert parts.posterior.embed_weight.shape == (SIZE.hidden, SIZE.units)
    assert parts.prior.gates_weight is prior.rnn.gates.weight
    assert parts.prior.hidden_bias is prior.rnn.hidden_layers[0].bias
    assert parts.prior.head is prior.rnn_to_prior_projector


def test_imagination_step_matches_the_prior_cell():
    prior, _ = _cells()
    state, belief, action, _ = _inputs()
    _, _, expected_belief = prior(state, belief, action)
    next_state, next_belief = PriorStep(prior)(state, belief, action)
    torch.testing.assert_close(next_belief, expected_belief, rtol=1e-6, atol=1e-6)
    one_hot = next_state.detach().reshape(-1, SIZE.num_categoricals, SIZE.num_classes)
    torch.testing.assert_close(one_hot.sum(-1), torch.ones(7, SIZE.num_categoricals))
    assert set(one_hot.round().unique().tolist()) <= {0.0, 1.0}


def test_a_plain_gru_prior_is_refused():
    prior = RSSMPriorV3(action_shape=(2,), action_dim=2, hidden_dim=4, rnn_hidden_dim=4)
    with pytest.raises(ValueError, match="block_gru"):
        rssm_parts(prior)


def test_a_deeper_block_gru_is_refused():
    prior = RSSMPriorV3(
        action_shape=(2,),
        action_dim=2,
        hidden_dim=4,
        rnn_hidden_dim=4,
        recurrent_model="block_gru",
        num_blocks=2,
        num_layers=2,
    )
    with pytest.raises(ValueError, match="one hidden layer"):
        rssm_parts(prior)


def test_leading_dims_are_kept():
    prior, _ = _cells()
    state, belief, action, _ = _inputs(6)
    parts = rssm_parts(prior).prior
    flat = gru_step(parts, state, belief, action_features(parts, action))
    grid = gru_step(
        parts,
        state.reshape(2, 3, -1),
        belief.reshape(2, 3, -1),
        action_features(parts, action.reshape(2, 3, -1)),
    )
    torch.testing.assert_close(grid, flat.reshape(2, 3, -1), rtol=1e-6, atol=1e-6)
