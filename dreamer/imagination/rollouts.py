"""Open-loop imagination from real trajectories: what the world model dreams.

Shared by the notebooks, the TensorBoard figure and the tests, so all of them show the same thing.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from dreamer.agent import Agent
from dreamer.world_model.networks import symexp, symlog


@torch.no_grad()
def posterior_after_prefix(agent: Agent, data: TensorDictBase, context: int) -> TensorDict:
    """Filter the first ``context`` steps of real ``[B, T]`` data; return the last ``state``/``belief``.

    The returned state is the model's belief about step ``context`` (after seeing ``x_context``).
    """
    prefix = data[:, :context].clone()
    out = agent.world_model(prefix)
    return TensorDict(
        {"state": out["next", "state"][:, -1], "belief": out["next", "belief"][:, -1]},
        [data.shape[0]],
    )


@torch.no_grad()
def decode(agent: Agent, state: torch.Tensor, belief: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decoded observation (raw units) and reward for model states ``[..., stoch]``/``[..., deter]``."""
    feature = torch.cat([state, belief], -1)
    return {
        "policy": symexp(agent.decoder(feature)),
        "reward": agent.world_model.two_hot(agent.reward_head(feature)),
    }


@torch.no_grad()
def imagine_with_actions(
    agent: Agent, start: TensorDictBase, actions: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Roll the prior forward open loop with given ``actions`` ``[B, H, A]``; decode each step."""
    state, belief = start["state"], start["belief"]
    states, beliefs = [], []
    for t in range(actions.shape[1]):
        _, state, belief = agent.prior(state, belief, actions[:, t])
        states.append(state)
        beliefs.append(belief)
    return decode(agent, torch.stack(states, 1), torch.stack(beliefs, 1))


@torch.no_grad()
def imagine_with_policy(agent: Agent, start: TensorDictBase, horizon: int) -> TensorDictBase:
    """Roll the imagination env (TorchRL ``DreamerEnv``) with the learned actor for ``horizon`` steps."""
    start = agent.model_env.reset(start.select("state", "belief").clone())
    rollout = agent.model_env.rollout(
        horizon, policy=agent.actor, auto_reset=False, tensordict=start, break_when_any_done=False
    )
    decoded = decode(agent, rollout["next", "state"], rollout["next", "belief"])
    rollout.set(("next", "decoded_policy"), decoded["policy"])
    return rollout


@torch.no_grad()
def open_loop_prediction(
    agent: Agent, data: TensorDictBase, context: int, horizon: int
) -> dict[str, torch.Tensor]:
    """Real vs imagined observations and rewards ``horizon`` steps after ``context`` real steps.

    ``data`` is real ``[B, T]`` with ``T >= context + horizon``; the imagined steps replay the real
    actions ``a_context ... a_{context+horizon-1}``. Returns ``real_obs``/``imagined_obs``
    ``[B, H, D]``, ``real_reward``/``imagined_reward`` ``[B, H, 1]`` and the per-horizon RMSE of
    the symlog observation ``error`` ``[H]``.
    """
    if data.shape[1] < context + horizon:
        raise ValueError(f"need {context + horizon} steps of data, got {data.shape[1]}")
    start = posterior_after_prefix(agent, data, context)
    actions = data["action"][:, context : context + horizon]
    imagined = imagine_with_actions(agent, start, actions)
    real_obs = data["next", "policy"][:, context : context + horizon]
    real_reward = data["next", "reward"][:, context : context + horizon]
    error = (symlog(imagined["policy"]) - symlog(real_obs)).pow(2).mean(dim=(0, 2)).sqrt()
    return {
        "real_obs": real_obs,
        "imagined_obs": imagined["policy"],
        "real_reward": real_reward,
        "imagined_reward": imagined["reward"],
        "error": error,
    }
