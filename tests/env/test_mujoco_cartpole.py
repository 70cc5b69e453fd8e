"""Isaac-Cartpole-v0 replica: model, reset, observation, reward and termination terms."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest
import torch

from dreamer.env.mujoco_env import MujocoBatchedEnv
from dreamer.env.tasks.cartpole import CARTPOLE_SPEC

DT = 1.0 / 60.0
ISAAC_WEIGHTS = {
    "alive": 1.0,
    "terminating": -2.0,
    "pole_pos": -1.0,
    "cart_vel": -0.01,
    "pole_vel": -0.005,
}


def test_constants_mirror_isaac():
    assert CARTPOLE_SPEC.max_episode_length == 300
    assert CARTPOLE_SPEC.action_scale == 100.0
    assert dict(CARTPOLE_SPEC.reward_weights) == ISAAC_WEIGHTS
    assert CARTPOLE_SPEC.obs_slices["joint_pos_rel"] == slice(0, 2)
    assert CARTPOLE_SPEC.obs_slices["joint_vel_rel"] == slice(2, 4)


def test_model_matches_isaac_asset():
    m = MujocoBatchedEnv("Isaac-Cartpole-v0", 1).model
    cart, pole = m.joint("slider_to_cart"), m.joint("cart_to_pole")
    assert (
        cart.type[0] == mujoco.mjtJoint.mjJNT_SLIDE and pole.type[0] == mujoco.mjtJoint.mjJNT_HINGE
    )
    np.testing.assert_allclose(m.jnt_axis[cart.id], [0, 1, 0])
    np.testing.assert_allclose(m.jnt_axis[pole.id], [1, 0, 0])
    assert m.jnt_limited[cart.id] and not m.jnt_limited[pole.id]
    np.testing.assert_allclose(m.jnt_range[cart.id], [-4, 4])
    assert m.dof_damping[cart.id] == 10.0 and m.dof_damping[pole.id] == 0.0
    assert m.body_mass[m.body("cart").id] == 1.0 and m.body_mass[m.body("pole").id] == 1.0
    np.testing.assert_allclose(m.body_ipos[m.body("pole").id], [0, 0, 0.47])
    np.testing.assert_allclose(m.body_pos[m.body("pole").id], [0.12, 0, 0])
    np.testing.assert_allclose(m.actuator_gear[0, 0], 100.0)


def test_reset_distribution():
    n = 1000
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", n, seed=0)
    obs = env.reset()["policy"].numpy()
    qpos, qvel = env.get_physics_state()
    np.testing.assert_allclose(obs, np.concatenate([qpos, qvel], axis=1), atol=1e-6)
    bounds = np.array([1.0, math.pi / 4, 0.5, math.pi / 4])
    assert np.all(np.abs(obs) <= bounds + 1e-6)
    assert np.all(obs.min(0) < -0.95 * bounds) and np.all(obs.max(0) > 0.95 * bounds)


def test_step_matches_plain_mujoco_with_scaled_clipped_force():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 2, seed=0)
    td = env.reset()
    qpos0, qvel0 = env.get_physics_state()
    td["action"] = torch.tensor([[0.4], [-3.0]])
    obs = env.step(td)["next", "policy"].numpy()
    m = env.model
    for i, force in enumerate([40.0, -100.0]):
        d = mujoco.MjData(m)
        d.qpos[:], d.qvel[:] = qpos0[i], qvel0[i]
        d.qfrc_applied[m.jnt_dofadr[m.joint("slider_to_cart").id]] = force
        for _ in range(2):  # decimation 2 at dt 1/120
            mujoco.mj_step(m, d)
        np.testing.assert_allclose(obs[i], np.concatenate([d.qpos, d.qvel]), rtol=1e-5, atol=1e-5)


def test_reward_terms_against_hand_computation():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 2, seed=0)
    td = env.reset()
    # A pole angle past pi checks that the angle penalty wraps it to [-pi, pi].
    env.set_physics_state([[0.5, 3.5], [-1.0, -0.2]], [[1.2, -2.0], [-0.3, 0.7]])
    td["action"] = torch.tensor([[0.3], [-0.6]])
    out = env.step(td)["next"]
    qpos, qvel = env.get_physics_state()
    for i in range(2):
        theta = math.remainder(qpos[i, 1], 2 * math.pi)
        expected = {
            "alive": 1.0,
            "terminating": 0.0,
            "pole_pos": theta**2,
            "cart_vel": abs(qvel[i, 0]),
            "pole_vel": abs(qvel[i, 1]),
        }
        for name, value in expected.items():
            assert env.task.reward_terms[name][i] == pytest.approx(value, rel=1e-12), name
        total = DT * sum(ISAAC_WEIGHTS[k] * v for k, v in expected.items())
        assert out["reward"][i, 0].item() == pytest.approx(total, rel=1e-5)
    assert qpos[0, 1] > math.pi  # the observation itself is not wrapped
    assert out["policy"][0, 1].item() == pytest.approx(qpos[0, 1], rel=1e-6)


def test_cart_out_of_bounds_terminates():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 3, seed=0)
    td = env.reset()
    env.set_physics_state([[2.99, 0.0], [-2.99, 0.0], [0.0, 0.0]], [[3, 0], [-3, 0], [0, 0]])
    td["action"] = torch.zeros(3, 1)
    out = env.step(td)["next"]
    assert out["terminated"].squeeze(-1).tolist() == [True, True, False]
    assert out["done"].squeeze(-1).tolist() == [True, True, False]
    assert not out["truncated"].any()
    assert out["policy"][0, 0] > 3.0 and out["policy"][1, 0] < -3.0
    assert env.task.reward_terms["alive"].tolist() == [0.0, 0.0, 1.0]
    # is_terminated is not divided by dt: the manager's dt scaling applies to it.
    terms = {k: v[0] for k, v in env.task.reward_terms.items()}
    total = DT * sum(ISAAC_WEIGHTS[k] * terms[k] for k in ISAAC_WEIGHTS)
    assert out["reward"][0, 0].item() == pytest.approx(total, rel=1e-5)
    shaping = terms["pole_pos"] + 0.01 * terms["cart_vel"] + 0.005 * terms["pole_vel"]
    assert total == pytest.approx(DT * (-2.0 - shaping))


def test_bounds_are_strict():
    task = MujocoBatchedEnv("Isaac-Cartpole-v0", 4).task
    qpos = np.array([[3.0, 0], [-3.0, 0], [3.0 + 1e-9, 0], [-3.0 - 1e-9, 0]])
    _, _, terminated = task.on_step(qpos, np.zeros((4, 2)), np.zeros((4, 0)), np.zeros((4, 1)))
    assert terminated.tolist() == [False, False, True, True]


def test_truncation_at_default_episode_length():
    env = MujocoBatchedEnv("Isaac-Cartpole-v0", 8, seed=0)
    roll = env.rollout(
        301, lambda td: td.set("action", torch.zeros(8, 1)), break_when_any_done=False
    )
    truncated = roll["next", "truncated"].squeeze(-1)
    terminated = roll["next", "terminated"].squeeze(-1)
    assert not terminated.any()
    assert truncated[:, 299].all() and not truncated[:, :299].any()
    assert not truncated[:, 300].any()  # a fresh episode after the automatic reset
