"""Isaac-Ant-v0 replica: model, reset, observation and reward terms against independent maths."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest
import torch

from dreamer.env.mujoco_env import MujocoBatchedEnv
from dreamer.env.tasks.ant import ANT_SPEC, FEET_BODY_NAMES, JOINT_NAMES

DT = 1.0 / 60.0
DEFAULT_JOINTS = np.array([0, 0.785398, 0, -0.785398, 0, -0.785398, 0, 0.785398])
ISAAC_WEIGHTS = {
    "progress": 1.0,
    "alive": 0.5,
    "upright": 0.1,
    "move_to_target": 0.5,
    "action_l2": -0.005,
    "energy": -0.05,
    "joint_pos_limits": -0.1,
    "terminating": -2.0,
}


def test_constants_mirror_isaac():
    assert ANT_SPEC.max_episode_length == 960
    assert ANT_SPEC.action_scale == 7.5
    assert dict(ANT_SPEC.reward_weights) == ISAAC_WEIGHTS
    covered = sorted((s.start, s.stop) for s in ANT_SPEC.obs_slices.values())
    assert covered[0][0] == 0 and covered[-1][1] == 60
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))


def test_model_matches_isaac_asset():
    env = MujocoBatchedEnv("Isaac-Ant-v0", 1)
    m = env.model
    assert m.opt.timestep == pytest.approx(1 / 120)
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert m.opt.cone == mujoco.mjtCone.mjCONE_PYRAMIDAL
    assert m.opt.gravity[2] == pytest.approx(-9.81)
    joint_ids = [m.joint(n).id for n in JOINT_NAMES]
    # Depth-first joint order = actuator order.
    assert [m.actuator(i).trnid[0] for i in range(m.nu)] == joint_ids
    np.testing.assert_allclose(m.actuator_gear[:, 0], 7.5)
    np.testing.assert_allclose(m.actuator_ctrlrange, [[-1, 1]] * 8)
    np.testing.assert_allclose(m.dof_damping[m.jnt_dofadr[joint_ids]], 0.1)
    np.testing.assert_allclose(m.dof_armature[m.jnt_dofadr[joint_ids]], 0.05)
    deg = np.deg2rad
    expected = [(-40, 40), (30, 100), (-40, 40), (-100, -30)] + [(-40, 40), (-100, -30)]
    expected += [(-40, 40), (30, 100)]
    np.testing.assert_allclose(m.jnt_range[joint_ids], deg(np.array(expected)), atol=1e-12)
    # No self-collisions: robot geoms only collide with the floor.
    floor = m.geom("floor").id
    for g in range(m.ngeom):
        if g != floor:
            assert (m.geom_contype[g] & m.geom_conaffinity[floor]) != 0
            for h in range(m.ngeom):
                if h not in (g, floor):
                    assert not (m.geom_contype[g] & m.geom_conaffinity[h])
    np.testing.assert_allclose(m.geom_friction[:, 0], 1.0)


def test_wrench_sites_are_the_child_side_joint_frames():
    """Isaac reports the wrench in the child-side joint frame (x along the axis), at the anchor."""
    m = MujocoBatchedEnv("Isaac-Ant-v0", 1).model
    for foot in FEET_BODY_NAMES:
        site, joint = m.site(f"{foot}_joint"), m.joint(foot)
        assert site.bodyid[0] == m.body(foot).id == joint.bodyid[0]
        np.testing.assert_allclose(site.pos, joint.pos, atol=1e-12)
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, site.quat)
        np.testing.assert_allclose(rot.reshape(3, 3)[:, 0], joint.axis, atol=1e-7)
        # Isaac's USD joint frames are the joint axis turned about z only (no roll about x).
        np.testing.assert_allclose(rot.reshape(3, 3)[:, 2], [0, 0, 1], atol=1e-7)


def test_reset_distribution():
    n = 512
    env = MujocoBatchedEnv("Isaac-Ant-v0", n, seed=0)
    obs = env.reset()["policy"].numpy()
    qpos, qvel = env.get_physics_state()
    np.testing.assert_array_equal(qpos[:, :7], np.tile([0, 0, 0.5, 1, 0, 0, 0], (n, 1)))
    np.testing.assert_array_equal(qvel[:, :6], 0.0)
    offsets = qpos[:, 7:] - DEFAULT_JOINTS
    assert np.all(np.abs(offsets) <= 0.2) and offsets.min() < -0.19 and offsets.max() > 0.19
    assert np.all(np.abs(qvel[:, 6:]) <= 0.1) and qvel[:, 6:].min() < -0.09
    assert np.allclose(obs[:, 0], 0.5) and np.allclose(obs[:, 1:10], 0.0)
    assert np.allclose(obs[:, 10:12], 1.0)  # upright, heading at the target
    np.testing.assert_array_equal(obs[:, 28:60], 0.0)  # no wrench before a step, no action yet


def _foot_wrench(m: mujoco.MjModel, d: mujoco.MjData, foot: str) -> np.ndarray:
    """Wrench the parent exerts on ``foot``: from cfrc_int, at the joint anchor, in its frame."""
    body = m.body(foot).id
    site = m.site(f"{foot}_joint").id
    torque_com, force = d.cfrc_int[body, :3], d.cfrc_int[body, 3:]
    com = d.subtree_com[m.body_rootid[body]]
    anchor = d.site_xpos[site]
    torque = torque_com + np.cross(com - anchor, force)
    rot = d.site_xmat[site].reshape(3, 3)
    return np.concatenate([rot.T @ force, rot.T @ torque])


def _stepped_state():
    """An env set to a tilted, moving state with one hip pressed on its limit, stepped once."""
    env = MujocoBatchedEnv("Isaac-Ant-v0", 2, seed=0)
    td = env.reset()
    quat = np.array([math.cos(0.2), 0.1, 0.15, math.sin(0.2)])
    quat /= np.linalg.norm(quat)
    joints = DEFAULT_JOINTS + np.array([0.1, 0.2, -0.3, -0.1, 0.2, 0.1, np.deg2rad(40) - 0.2, 0])
    joints[6] = np.deg2rad(40)  # right_back_leg on its upper limit
    qpos0 = np.concatenate([[3.0, -2.0, 0.62], quat, joints])
    qvel0 = np.array([0.4, -0.3, 0.1, 0.5, -0.2, 0.8, 1.0, -2.0, 0.5, 0.3, -1.0, 2.0, 3.0, 0.0])
    env.set_physics_state(qpos0, qvel0, env_ids=[0])
    action = torch.tensor([[0.3, -0.7, 2.0, 0.1, -0.4, 0.9, 1.0, -0.2], [0.0] * 8])
    td["action"] = action
    out = env.step(td)["next"]
    return env, qpos0, qvel0, action[0].numpy().astype(np.float64), out


def test_observation_terms_against_independent_computation():
    env, qpos0, qvel0, action, out = _stepped_state()
    m = env.model
    a = np.clip(action, -1, 1)
    # Replay the control step with plain mj_step calls on a fresh MjData.
    d = mujoco.MjData(m)
    d.qpos[:], d.qvel[:], d.ctrl[:] = qpos0, qvel0, a
    mujoco.mj_step(m, d)
    mujoco.mj_step(m, d)
    wrench = np.concatenate([_foot_wrench(m, d, f) for f in FEET_BODY_NAMES])
    qpos, qvel = env.get_physics_state()
    np.testing.assert_allclose(qpos[0], d.qpos, atol=1e-9)
    np.testing.assert_allclose(qvel[0], d.qvel, atol=1e-9)

    mujoco.mj_forward(m, d)  # kinematics of the final state
    torso = m.body("torso").id
    rot = d.xmat[torso].reshape(3, 3)
    vel6 = np.zeros(6)
    mujoco.mj_objectVelocity(m, d, mujoco.mjtObj.mjOBJ_XBODY, torso, vel6, 1)
    pos = d.xpos[torso]
    yaw, roll = math.atan2(rot[1, 0], rot[0, 0]), math.atan2(rot[2, 1], rot[2, 2])
    to_target = np.array([1000.0, 0.0]) - pos[:2]
    angle = math.remainder(math.atan2(to_target[1], to_target[0]) - yaw, 2 * math.pi)
    heading = rot[:2, 0] @ (to_target / np.linalg.norm(to_target))
    jid = [m.joint(n).id for n in JOINT_NAMES]
    lo, hi = m.jnt_range[jid, 0], m.jnt_range[jid, 1]
    q = d.qpos[m.jnt_qposadr[jid]]
    expected = np.concatenate(
        [
            [pos[2]],
            vel6[3:],
            vel6[:3],
            [yaw, roll, angle, rot[2, 2], heading],
            (q - (lo + hi) / 2) / ((hi - lo) / 2),
            0.2 * d.qvel[m.jnt_dofadr[jid]],
            0.1 * wrench,
            a,
        ]
    )
    obs = out["policy"][0].numpy().astype(np.float64)
    for name, sl in ANT_SPEC.obs_slices.items():
        np.testing.assert_allclose(obs[sl], expected[sl], rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.abs(wrench).max() > 0.1  # the feet really carry load


def test_reward_terms_against_hand_computation():
    env, qpos0, qvel0, action, out = _stepped_state()
    a = np.clip(action, -1, 1)
    qpos, qvel = env.get_physics_state()
    m = env.model
    quat = qpos[0, 3:7]
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, quat)
    rot = rot.reshape(3, 3)
    to_target = np.array([1000.0, 0.0]) - qpos[0, :2]
    dist_new = np.linalg.norm(to_target)
    dist_old = np.linalg.norm(np.array([1000.0, 0.0]) - qpos0[:2])
    heading = rot[:2, 0] @ (to_target / dist_new)
    jid = [m.joint(n).id for n in JOINT_NAMES]
    lo, hi = m.jnt_range[jid, 0], m.jnt_range[jid, 1]
    scaled = np.abs((qpos[0, m.jnt_qposadr[jid]] - (lo + hi) / 2) / ((hi - lo) / 2))
    jvel = qvel[0, m.jnt_dofadr[jid]]
    expected = {
        "progress": (dist_old - dist_new) / DT,
        "alive": 1.0,
        "upright": float(rot[2, 2] > 0.93),
        "move_to_target": 1.0 if heading > 0.8 else heading / 0.8,
        "action_l2": float(np.sum(a**2)),
        "energy": float(np.sum(np.abs(a * jvel))),
        "joint_pos_limits": float(np.sum(np.where(scaled > 0.99, (scaled - 0.99) / 0.01, 0.0))),
        "terminating": 0.0,
    }
    assert expected["joint_pos_limits"] > 0  # the hip on its limit exercises the penalty
    for name, value in expected.items():
        assert env.task.reward_terms[name][0] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    total = DT * sum(ISAAC_WEIGHTS[k] * v for k, v in expected.items())
    assert out["reward"][0, 0].item() == pytest.approx(total, rel=1e-5, abs=1e-6)


def test_fall_terminates_with_exact_penalty():
    env = MujocoBatchedEnv("Isaac-Ant-v0", 2, seed=0)
    td = env.reset()
    qpos, qvel = env.get_physics_state()
    # Upside down with the torso below 0.31 m: the legs point up and cannot push it back.
    qpos[0, 2:7] = [0.29, 0.0, 1.0, 0.0, 0.0]
    env.set_physics_state(qpos, qvel)
    td["action"] = torch.zeros(2, 8)
    out = env.step(td)["next"]
    assert out["terminated"].squeeze(-1).tolist() == [True, False]
    assert out["done"].squeeze(-1).tolist() == [True, False]
    assert not out["truncated"].any()
    assert out["policy"][0, 0] < 0.31  # the true final observation
    terms = {k: v[0] for k, v in env.task.reward_terms.items()}
    assert terms["alive"] == 0.0
    others = sum(ISAAC_WEIGHTS[k] * terms[k] for k in ISAAC_WEIGHTS if k != "terminating")
    assert out["reward"][0, 0].item() == pytest.approx(DT * others - 2.0, abs=1e-6)
    assert env.task.reward_terms["alive"][1] == 1.0


def test_truncation_at_default_episode_length():
    env = MujocoBatchedEnv("Isaac-Ant-v0", 1, seed=0)
    td = env.reset()
    td["action"] = torch.zeros(1, 8)
    for t in range(1, 961):
        out = env.step(td)["next"]
        assert out["truncated"].item() == (t == 960), t
        assert not out["terminated"].item()
        td["policy"] = out["policy"]
    assert env.elapsed_steps.tolist() == [960]


def test_short_episode_length_override():
    env = MujocoBatchedEnv("Isaac-Ant-v0", 2, seed=0, max_episode_length=3)
    roll = env.rollout(7, break_when_any_done=False)
    truncated = roll["next", "truncated"].squeeze(-1)
    assert truncated.nonzero()[:, 1].unique().tolist() == [2, 5]


def test_batched_task_maths_equal_each_env_computed_alone():
    """The task's maths over all N envs (strided state views, row layouts, slices) give every
    env exactly what that env's own state gives when computed alone."""
    n = 48
    env = MujocoBatchedEnv("Isaac-Ant-v0", n, seed=0)
    td = env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):  # moving, tilted states with distinct contact forces
        td["action"] = torch.rand(n, 8, generator=gen) * 2 - 1
        td = env.step(td)["next"]
    state, sens = env._state.copy(), env._sens_out[:, -1].copy()
    qpos, qvel = state[:, env._qpos_sl], state[:, env._qvel_sl]
    action = np.random.default_rng(1).uniform(-1, 1, (n, 8))
    batched = type(env.task)(env.model, n)
    batched.potential[:] = np.linspace(-60_100.0, -59_900.0, n)  # progress differs per env
    obs, reward, terminated = batched.on_step(qpos, qvel, sens, action)
    for i in range(n):
        alone = type(env.task)(env.model, 1)
        alone.potential[:] = np.linspace(-60_100.0, -59_900.0, n)[i]
        obs_i, reward_i, terminated_i = alone.on_step(
            qpos[i : i + 1].copy(),
            qvel[i : i + 1].copy(),
            sens[i : i + 1].copy(),
            action[i : i + 1],
        )
        np.testing.assert_allclose(obs[i], obs_i[0], rtol=1e-12, atol=1e-12, err_msg=str(i))
        assert reward[i] == pytest.approx(reward_i[0], rel=1e-12, abs=1e-12)
        assert terminated[i] == terminated_i[0]
        for name, term in batched.reward_terms.items():
            assert term[i] == pytest.approx(alone.reward_terms[name][0], rel=1e-12, abs=1e-12)
    assert len(set(np.round(obs[:, 0], 6))) == n  # the envs really differ
