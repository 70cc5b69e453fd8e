"""The TorchRL contract of MujocoBatchedEnv: specs, shapes, resets, seeding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrl.envs.utils import check_env_specs

from dreamer.env.mujoco_env import EMBEDDED_TASKS, MujocoBatchedEnv

DIMS = {"Isaac-Ant-v0": (60, 8), "Isaac-Cartpole-v0": (4, 1)}
DONE_KEYS = ("done", "terminated", "truncated")


def _fixed_policy(act_dim: int, seed: int):
    """A deterministic open-loop policy (env.rollout's default uses torch's global RNG)."""
    gen = torch.Generator().manual_seed(seed)

    def policy(td):
        n = td.batch_size[0]
        td["action"] = torch.rand(n, act_dim, generator=gen) * 2.0 - 1.0
        return td

    return policy


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError) as err:
        MujocoBatchedEnv("Isaac-Humanoid-v0", 2)
    for name in ("Isaac-Ant-v0", "Isaac-Cartpole-v0"):
        assert name in str(err.value)


def test_registry_constants():
    assert set(EMBEDDED_TASKS) == {"Isaac-Ant-v0", "Isaac-Cartpole-v0"}
    for spec in EMBEDDED_TASKS.values():
        assert spec.physics_dt == pytest.approx(1 / 120)
        assert spec.decimation == 2
        assert spec.step_dt == pytest.approx(1 / 60)
        assert (spec.obs_dim, spec.act_dim) == DIMS[spec.name]
    assert EMBEDDED_TASKS["Isaac-Ant-v0"].max_episode_length == 960
    assert EMBEDDED_TASKS["Isaac-Cartpole-v0"].max_episode_length == 300


@pytest.mark.parametrize("task", sorted(DIMS))
def test_specs_shapes_and_dtypes(task):
    n = 3
    obs_dim, act_dim = DIMS[task]
    env = MujocoBatchedEnv(task, n, device="cpu", seed=0)
    assert env.batch_size == torch.Size([n])
    assert env.observation_spec["policy"].shape == (n, obs_dim)
    assert env.observation_spec["policy"].dtype == torch.float32
    assert env.action_spec.shape == (n, act_dim)
    assert env.action_spec.dtype == torch.float32
    assert torch.all(env.action_spec.space.low == -1) and torch.all(env.action_spec.space.high == 1)
    assert env.reward_spec.shape == (n, 1) and env.reward_spec.dtype == torch.float32
    for key in DONE_KEYS:
        assert env.full_done_spec[key].shape == (n, 1)
        assert env.full_done_spec[key].dtype == torch.bool
    check_env_specs(env, seed=0)

    td = env.reset()
    assert td["policy"].shape == (n, obs_dim) and td["policy"].dtype == torch.float32
    assert env.observation_spec.is_in(td.select("policy"))
    for key in DONE_KEYS:
        assert td[key].shape == (n, 1) and td[key].dtype == torch.bool and not td[key].any()

    td["action"] = env.action_spec.rand()
    out = env.step(td)["next"]
    assert out["policy"].shape == (n, obs_dim) and out["policy"].dtype == torch.float32
    assert out["reward"].shape == (n, 1) and out["reward"].dtype == torch.float32
    assert env.reward_spec.is_in(out["reward"])
    assert env.observation_spec.is_in(out.select("policy"))
    for key in DONE_KEYS:
        assert out[key].shape == (n, 1) and out[key].dtype == torch.bool
        assert env.full_done_spec[key].is_in(out[key])
    assert all(v.device == torch.device("cpu") for v in out.values())

    steps = 7
    roll = env.rollout(steps, _fixed_policy(act_dim, 0), break_when_any_done=False)
    assert roll.batch_size == torch.Size([n, steps])
    assert roll["policy"].shape == (n, steps, obs_dim)
    assert roll["action"].shape == (n, steps, act_dim)
    assert roll["next", "policy"].shape == (n, steps, obs_dim)
    assert roll["next", "reward"].shape == (n, steps, 1)
    for key in DONE_KEYS:
        assert roll["next", key].shape == (n, steps, 1)
        assert roll["next", key].dtype == torch.bool
    assert torch.isfinite(roll["next", "policy"]).all()


def test_out_of_range_actions_are_clipped():
    results = []
    for scale in (1.0, 5.0):
        env = MujocoBatchedEnv("Isaac-Ant-v0", 2, seed=3)
        td = env.reset()
        td["action"] = torch.tensor([[scale, -scale] * 4, [0.5] * 8])
        results.append(env.step(td)["next"])
    for key in ("policy", "reward"):
        torch.testing.assert_close(results[0][key], results[1][key], rtol=0, atol=0)
    assert results[0]["policy"][0, 52:60].abs().max() == 1.0


def _terminal_cartpole_env(n: int, max_len: int | None = None):
    """Cartpole envs where env 1 leaves the rail bounds on the first step, and a reset td."""
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", n, seed=5, max_episode_length=max_len)
    td = env.reset()
    env.set_physics_state([2.99, 0.0], [3.0, 0.0], env_ids=[1])
    return env, td


def _is_cartpole_reset_obs(obs: torch.Tensor) -> bool:
    bounds = torch.tensor([1.0, np.pi / 4, 0.5, np.pi / 4])
    return bool((obs.abs() <= bounds + 1e-6).all())


def test_step_and_maybe_reset_resets_only_finished_envs():
    n = 4
    env, td = _terminal_cartpole_env(n)
    td["action"] = torch.zeros(n, 1)
    out, td_next = env.step_and_maybe_reset(td)
    terminated = out["next", "terminated"].squeeze(-1)
    assert terminated.tolist() == [False, True, False, False]
    final_obs = out["next", "policy"]
    assert torch.isfinite(final_obs).all()
    # The true terminal observation: the cart is past the bound, not back at a reset pose.
    assert final_obs[1, 0] > 3.0
    assert _is_cartpole_reset_obs(td_next["policy"][1])
    assert not torch.equal(td_next["policy"][1], final_obs[1])
    keep = [0, 2, 3]
    torch.testing.assert_close(td_next["policy"][keep], final_obs[keep], rtol=0, atol=0)
    assert env.elapsed_steps.tolist() == [1, 0, 1, 1]
    assert not td_next["done"].any()


@pytest.mark.parametrize("mask_shape", [(4, 1), (4,)])
def test_partial_reset_leaves_other_envs_untouched(mask_shape):
    n = 4
    env = MujocoBatchedEnv("Isaac-Ant-v0", n, seed=1)
    td = env.reset()
    for _ in range(3):
        td["action"] = env.action_spec.rand()
        td = env.step(td)["next"]
    qpos0, qvel0 = env.get_physics_state()
    obs0 = td["policy"].clone()
    mask = torch.tensor([False, True, False, True]).reshape(mask_shape)
    td_reset = env.reset(td.clone().set("_reset", mask))
    qpos1, qvel1 = env.get_physics_state()
    for i in (0, 2):
        np.testing.assert_array_equal(qpos1[i], qpos0[i])
        np.testing.assert_array_equal(qvel1[i], qvel0[i])
        torch.testing.assert_close(td_reset["policy"][i], obs0[i], rtol=0, atol=0)
    for i in (1, 3):
        assert not np.array_equal(qpos1[i], qpos0[i])
        assert qpos1[i, 2] == 0.5 and np.all(qvel1[i, :6] == 0)
        assert torch.all(td_reset["policy"][i, 52:60] == 0)  # action history cleared
    # Fresh noise per reset env: the two reset envs differ from each other.
    assert not np.array_equal(qpos1[1, 7:], qpos1[3, 7:])
    assert env.elapsed_steps.tolist() == [3, 0, 3, 0]


def test_reset_without_mask_resets_everything():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 3, seed=2)
    td = env.reset()
    td["action"] = torch.ones(3, 1)
    env.step(td)
    env.reset()
    assert env.elapsed_steps.tolist() == [0, 0, 0]


def test_rollout_keeps_true_final_obs_and_resets_after_done():
    n, max_len, steps = 4, 5, 12
    env, td = _terminal_cartpole_env(n, max_len=max_len)
    roll = env.rollout(
        steps,
        _fixed_policy(1, 1),
        auto_reset=False,
        tensordict=td,
        break_when_any_done=False,
    )
    done = roll["next", "done"].squeeze(-1)
    truncated = roll["next", "truncated"].squeeze(-1)
    terminated = roll["next", "terminated"].squeeze(-1)
    assert terminated[1, 0]  # env 1 fell off the rail on its first step
    # Envs 0, 2, 3 are cut after exactly max_len steps, then every max_len steps.
    for i in (0, 2, 3):
        assert truncated[i].nonzero().squeeze(-1).tolist() == [4, 9]
    next_obs, obs = roll["next", "policy"], roll["policy"]
    assert torch.isfinite(next_obs).all()
    for i in range(n):
        for t in range(steps - 1):
            if done[i, t]:
                assert _is_cartpole_reset_obs(obs[i, t + 1])
                assert not torch.equal(obs[i, t + 1], next_obs[i, t])
            else:
                torch.testing.assert_close(obs[i, t + 1], next_obs[i, t], rtol=0, atol=0)
    assert next_obs[1, 0, 0] > 3.0


def _seeded_rollout(seed: int | None, set_seed: int | None = None, num_threads=None):
    env = MujocoBatchedEnv("Isaac-Ant-v0", 4, seed=seed, num_threads=num_threads)
    env.max_episode_length = 6  # several resets inside the rollout
    if set_seed is not None:
        env.set_seed(set_seed)
    return env.rollout(15, _fixed_policy(8, 0), break_when_any_done=False)


def test_seed_determinism():
    a, b = _seeded_rollout(7), _seeded_rollout(7)
    for key in (("next", "policy"), ("next", "reward"), "policy"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    c = _seeded_rollout(None, set_seed=7)
    torch.testing.assert_close(a["next", "policy"], c["next", "policy"], rtol=0, atol=0)
    d = _seeded_rollout(8)
    assert not torch.equal(a["policy"][:, 0], d["policy"][:, 0])
    assert not torch.equal(a["next", "reward"], d["next", "reward"])


def test_thread_count_does_not_change_results():
    a, b = _seeded_rollout(11, num_threads=1), _seeded_rollout(11, num_threads=2)
    torch.testing.assert_close(a["next", "policy"], b["next", "policy"], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_outputs_on_cuda():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 2, device="cuda", seed=0)
    roll = env.rollout(3, break_when_any_done=False)
    assert all(v.device.type == "cuda" for v in roll.values(True, True))
