"""Imagination helpers shared by notebooks and TensorBoard: shapes, consistency, batching."""

from __future__ import annotations

import torch

from dreamer.imagination.rollouts import (
    imagine_with_actions,
    imagine_with_policy,
    open_loop_prediction,
    posterior_after_prefix,
)


def _real_data(env, agent, steps):
    with torch.no_grad():
        return env.rollout(steps, agent.policy, break_when_any_done=False)


def test_open_loop_prediction_shapes_and_alignment(toy_agent):
    env, agent = toy_agent
    data = _real_data(env, agent, 12)
    out = open_loop_prediction(agent, data, context=4, horizon=6)
    assert out["real_obs"].shape == out["imagined_obs"].shape == (6, 6, 4)
    assert out["imagined_reward"].shape == (6, 6, 1)
    assert out["error"].shape == (6,) and bool(torch.isfinite(out["error"]).all())
    torch.testing.assert_close(out["real_obs"], data["next", "policy"][:, 4:10])


def test_imagined_steps_follow_the_given_actions(toy_agent):
    env, agent = toy_agent
    data = _real_data(env, agent, 6)
    start = posterior_after_prefix(agent, data, 3)
    torch.manual_seed(0)
    a = imagine_with_actions(agent, start, torch.ones(6, 5, 2))
    torch.manual_seed(0)
    b = imagine_with_actions(agent, start, -torch.ones(6, 5, 2))
    assert not torch.allclose(a["policy"], b["policy"])


def test_policy_imagination_is_batched_over_start_states(toy_agent):
    env, agent = toy_agent
    data = _real_data(env, agent, 6)
    start = posterior_after_prefix(agent, data, 3)
    many = start.unsqueeze(1).expand(6, 7).reshape(-1).clone()
    dream = imagine_with_policy(agent, many, 5)
    assert dream["action"].shape == (42, 5, 2)
    assert dream["next", "decoded_policy"].shape == (42, 5, 4)
