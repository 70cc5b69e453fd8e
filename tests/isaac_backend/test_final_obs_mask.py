"""Isaac Lab without true final observations: the replay marks those steps and the world model's
reconstruction loss ignores them (stand-in env with ``compute_final_obs=False``, as on 2.x)."""

from __future__ import annotations

import torch
from torchrl.envs import InitTracker, TransformedEnv
from toy_env import ToyBatchedEnv

from dreamer.agent import build_agent
from dreamer.env.factory import add_episode_stats
from dreamer.policy.acting import add_acting_state
from dreamer.replay.buffer import FINAL_OBS_VALID, make_replay_buffer, select_for_storage
from dreamer.world_model.networks import model_size_from_config
from isaac_backend import isaac_standin as standin  # skips this module without gymnasium


def _reco_grad(agent, sequences) -> torch.Tensor:
    """d loss_model_reco / d decoder output, per step: ``[B, T]`` gradient norms."""
    outputs = []

    def keep(module, args, output):
        output.retain_grad()
        outputs.append(output)

    handle = agent.decoder.register_forward_hook(keep)
    try:
        losses, _ = agent.loss.model_loss(sequences.clone())
    finally:
        handle.remove()
    (reco,) = outputs
    losses["loss_model_reco"].backward()
    return reco.grad.norm(dim=-1)


def _env_without_final_obs(smoke_cfg):
    """The Isaac Lab stand-in without final observations, wrapped for training, and its agent."""
    size = model_size_from_config(smoke_cfg.model)
    base = standin.make_env(standin.make_cfg(compute_final_obs=False))
    env = add_acting_state(add_episode_stats(base), size, standin.ACT_DIM)
    return env, build_agent(smoke_cfg, env)


def test_missing_final_obs_is_stored_invalid_and_not_reconstructed(fake_isaaclab, smoke_cfg):
    env, agent = _env_without_final_obs(smoke_cfg)
    with torch.no_grad():
        rollout = env.rollout(16, break_when_any_done=False)  # random actions

    stored = select_for_storage(rollout)
    replay = make_replay_buffer(1000, batch_size=2, batch_length=8, device="cpu")
    replay.extend(stored)
    data = replay.storage[:]
    done = data["next", "done"].squeeze(-1)
    valid = data[FINAL_OBS_VALID].squeeze(-1)
    assert done.any() and (~done).any()
    assert torch.equal(valid, ~done)  # exactly the done steps hold a reset obs, flagged

    grad = _reco_grad(agent, stored)
    invalid = ~stored[FINAL_OBS_VALID].squeeze(-1)
    assert invalid.sum() == done.sum()
    assert torch.all(grad[invalid] == 0)
    assert torch.all(grad[~invalid] > 0)

    # the same rows with the flag cleared do contribute: the zero above comes from the mask
    agent.loss.zero_grad()
    unmasked = stored.clone()
    unmasked[FINAL_OBS_VALID] = torch.ones_like(unmasked[FINAL_OBS_VALID])
    assert torch.all(_reco_grad(agent, unmasked)[invalid] > 0)


def test_envs_without_the_flag_are_stored_as_valid():
    env = TransformedEnv(ToyBatchedEnv(3), InitTracker())  # the embedded env has no flag
    rollout = env.rollout(10, break_when_any_done=False)
    assert FINAL_OBS_VALID not in rollout.keys(True)
    stored = select_for_storage(rollout)
    assert stored[FINAL_OBS_VALID].shape == rollout["next", "done"].shape
    assert stored[FINAL_OBS_VALID].all()


def _filtered(agent, sequences, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        nxt = agent.world_model(sequences.clone()).get("next")
    return nxt["state"], nxt["posterior_logits"], nxt["prior_logits"]


def test_state_at_a_missing_final_obs_comes_from_the_prior(fake_isaaclab, smoke_cfg):
    env, agent = _env_without_final_obs(smoke_cfg)
    with torch.no_grad():
        stored = select_for_storage(env.rollout(16, break_when_any_done=False))
    invalid = ~stored[FINAL_OBS_VALID].squeeze(-1)
    assert invalid.any()

    state, posterior, prior = _filtered(agent, stored)
    assert torch.equal(posterior[invalid], prior[invalid])  # KL zero there
    # The reset obs stored as x_{t+1} at those rows no longer reaches the model at all.
    garbage = stored.clone()
    garbage["next", "policy"][invalid] = 100.0 * torch.randn_like(
        garbage["next", "policy"][invalid]
    )
    other_state, other_posterior, _ = _filtered(agent, garbage)
    assert torch.equal(state, other_state) and torch.equal(posterior, other_posterior)

    # Without the flag the same change does move those rows: the equality above is the fix's.
    for data in (stored, garbage):
        data[FINAL_OBS_VALID] = torch.ones_like(data[FINAL_OBS_VALID])
    flagless, flagless_posterior, _ = _filtered(agent, stored)
    changed, changed_posterior, _ = _filtered(agent, garbage)
    assert not torch.equal(flagless_posterior[invalid], changed_posterior[invalid])
    assert torch.equal(flagless_posterior[~invalid], changed_posterior[~invalid])
