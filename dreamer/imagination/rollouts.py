"""Open-loop imagination from real trajectories: what the world model dreams.

Shared by the notebooks, the TensorBoard figure and the tests, so all of them show the same thing.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase

from dreamer.agent import Agent
from dreamer.world_model.networks import symlog
from dreamer.world_model.observations import PIXELS_KEY, VECTOR_KEY, as_tuple, decoded_observation


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
    """Decoded observations and reward for model states ``[..., stoch]``/``[..., deter]``.

    One entry per modelled observation key, in its own units (raw ``policy``; ``pixels`` as
    float images in [0, 1], ``[..., H, W, 3]``), plus ``reward``.
    """
    feature = torch.cat([state, belief], -1)
    recos = as_tuple(agent.decoder(feature))
    decoded = {
        key: decoded_observation(key, reco) for key, reco in zip(agent.obs_keys, recos, strict=True)
    }
    decoded["reward"] = agent.world_model.two_hot(agent.reward_head(feature))
    return decoded


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
    for key in agent.obs_keys:
        rollout.set(("next", f"decoded_{key}"), decoded[key])
    return rollout


@torch.no_grad()
def open_loop_prediction(
    agent: Agent, data: TensorDictBase, context: int, horizon: int
) -> dict[str, torch.Tensor]:
    """Real vs imagined observations and rewards ``horizon`` steps after ``context`` real steps.

    ``data`` is real ``[B, T]`` with ``T >= context + horizon``; the imagined steps replay the real
    actions ``a_context ... a_{context+horizon-1}``. Returns ``real_reward``/``imagined_reward``
    ``[B, H, 1]``; for a model of ``policy``, ``real_obs``/``imagined_obs`` ``[B, H, D]``; for a
    model of ``pixels``, ``real_pixels``/``imagined_pixels`` ``[B, H, h, w, 3]`` in [0, 1] and
    their per-horizon RMSE ``pixel_error`` ``[H]``. ``error`` ``[H]`` is the per-horizon RMSE of
    the symlog ``policy`` observation, or ``pixel_error`` for a model that only sees pixels.
    """
    if data.shape[1] < context + horizon:
        raise ValueError(f"need {context + horizon} steps of data, got {data.shape[1]}")
    start = posterior_after_prefix(agent, data, context)
    actions = data["action"][:, context : context + horizon]
    imagined = imagine_with_actions(agent, start, actions)
    window = slice(context, context + horizon)
    out = {
        "real_reward": data["next", "reward"][:, window],
        "imagined_reward": imagined["reward"],
    }
    if PIXELS_KEY in agent.obs_keys:
        real_pixels = data["next", PIXELS_KEY][:, window].float() / 255.0
        squared = (imagined[PIXELS_KEY] - real_pixels).pow(2)
        out["real_pixels"] = real_pixels
        out["imagined_pixels"] = imagined[PIXELS_KEY]
        out["pixel_error"] = out["error"] = squared.mean(dim=(0, *range(2, squared.ndim))).sqrt()
    if VECTOR_KEY in agent.obs_keys:
        real_obs = data["next", VECTOR_KEY][:, window]
        out["real_obs"] = real_obs
        out["imagined_obs"] = imagined[VECTOR_KEY]
        squared = (symlog(imagined[VECTOR_KEY]) - symlog(real_obs)).pow(2)
        out["error"] = squared.mean(dim=(0, 2)).sqrt()
    return out
