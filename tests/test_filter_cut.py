"""The update's backward pass in three pieces gives the gradients of one ``backward()``.

:mod:`dreamer.world_model.filter_cut` cuts the filter's outputs off as leaves so the world model's
heads can be backpropagated early. On a CPU (float32), the pieces must give the gradients of one
``backward()`` of TorchRL's summed ``DreamerV3Loss`` on the same batch and RNG: the same numbers
summed in another order, so 1e-5 relative. The losses themselves are bitwise the same.
"""

from __future__ import annotations

import pytest
import torch
from test_graphed_update import _agent, _sequences

from dreamer.training.concurrent_loss import dreamer_losses
from dreamer.world_model.filter_cut import cut_filter_outputs


def _loss_sum(losses) -> torch.Tensor:
    return sum(v.sum() for k, v in losses.items() if k.startswith("loss_"))


def _randomise_critic(agent) -> None:
    """DreamerV3 zero-initialises the critic's output layer, which then sends no gradient into
    the states it reads; random weights make the replay critic's gradient visible."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in agent.value_mlp.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.mark.parametrize(
    "invalid_next_obs, replay_value_grad", [(False, True), (True, True), (False, False)]
)
def test_backward_in_pieces_matches_one_backward_of_torchrl_loss(
    smoke_cfg, invalid_next_obs, replay_value_grad
):
    # Without the replay critic's gradient into the world model (loss.replay_value_grad=false),
    # the reference is TorchRL's forward with that loss's features detached.
    smoke_cfg.loss.replay_value_grad = replay_value_grad
    reference, split = _agent(smoke_cfg, 21), _agent(smoke_cfg, 21)
    assert reference.loss.value_loss.replay_grad is replay_value_grad
    for agent in (reference, split):
        _randomise_critic(agent)
    sample = _sequences(3, 8, obs_dim=4, action_dim=2)
    if invalid_next_obs:
        # Rows whose next observation the env could not give take their state from the prior,
        # a path after the cut that both the heads and the replay critic read.
        valid = torch.ones(3, 8, 1, dtype=torch.bool)
        valid[:, 3] = False
        sample.set(("next", "final_obs_valid"), valid)
    torch.manual_seed(5)
    expected = reference.loss(sample.clone())
    _loss_sum(expected).backward()
    torch.manual_seed(5)
    got = dreamer_losses(split.loss, sample.clone(), backward=True)
    for key in [k for k in expected.keys() if k.startswith("loss_")]:
        assert torch.equal(got[key], expected[key]), key
    named = dict(reference.loss.named_parameters())
    # Where rows take the prior's state, the heads' and the replay critic's gradients into it
    # are summed at the cut instead of inside the prior head; the filter's backward over 8 steps
    # then amplifies that float32 rounding to ~2e-4 on a few elements (measured; in float64 the
    # split equals the sum of the two losses' separate gradients to 1e-16).
    rtol = 1e-3 if invalid_next_obs else 1e-5
    compared = 0
    for name, param in split.loss.named_parameters():
        want = named[name].grad
        assert (param.grad is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(param.grad, want, rtol=rtol, atol=1e-6, msg=name)
            compared += 1
    assert compared > 20


def test_heads_backpropagate_down_to_the_cut_only(smoke_cfg):
    agent = _agent(smoke_cfg, 22)
    sample = _sequences(2, 6, obs_dim=4, action_dim=2)
    with cut_filter_outputs() as cut:
        losses, _ = agent.loss.model_loss(sample)
    # posterior logits, states, beliefs: the filter's three outputs
    assert len(cut.outputs) == 3 and all(leaf.is_leaf for leaf in cut.leaves)
    _loss_sum(losses).backward()
    # The heads got their gradients; nothing before the cut did yet.
    assert all(p.grad is not None for p in agent.world_model.decoder.parameters())
    assert all(p.grad is None for p in agent.world_model.encoder.parameters())
    outputs, grads = cut.backward_targets()
    assert len(outputs) == 3
    torch.autograd.backward(outputs, grads)
    assert all(p.grad is not None for p in agent.world_model.encoder.parameters())


def test_no_cut_without_gradients(smoke_cfg):
    with torch.no_grad(), cut_filter_outputs() as cut:
        assert cut is None
    agent = _agent(smoke_cfg, 23)
    with torch.no_grad(), pytest.raises(RuntimeError, match="gradients enabled"):
        dreamer_losses(agent.loss, _sequences(2, 6, obs_dim=4, action_dim=2), backward=True)


def test_replay_value_grad_off_keeps_the_replay_critic_out_of_the_world_model(smoke_cfg):
    sample = _sequences(3, 8, obs_dim=4, action_dim=2)

    def world_model_grads(weight: float, grad: bool) -> list[torch.Tensor]:
        smoke_cfg.loss.replay_value_weight, smoke_cfg.loss.replay_value_grad = weight, grad
        agent = _agent(smoke_cfg, 24)
        _randomise_critic(agent)
        torch.manual_seed(6)
        _loss_sum(agent.loss(sample.clone())).backward()
        return [p.grad for p in agent.world_model.encoder.parameters()]

    off, none, on = (
        world_model_grads(0.3, False),
        world_model_grads(0.0, True),
        world_model_grads(0.3, True),
    )
    for a, b in zip(off, none, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(a, c, rtol=1e-4, atol=1e-6) for a, c in zip(off, on, strict=True))
