"""Integration tests against real Isaac Lab 3.x kit-less (Newton physics, CPU).

Run in the Python 3.12 venv made by ``scripts/setup_isaaclab_env.sh`` (the README's test command
does, with ``DREAMER_REQUIRE_ISAACLAB=1``)::

    DREAMER_REQUIRE_ISAACLAB=1 .venv-isaaclab/bin/python -m pytest -m isaaclab tests/isaac_backend

Skipped where ``isaaclab`` is not importable, unless ``DREAMER_REQUIRE_ISAACLAB=1`` (conftest.py).
The first launch on a machine compiles warp kernels (~1.5 min, cached under ~/.cache/warp); warm,
the module takes ~1 min.
"""

from __future__ import annotations

import os

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.data import Bounded, LazyTensorStorage, ReplayBuffer
from torchrl.envs import InitTracker, TransformedEnv

from dreamer.env.isaaclab_env import isaaclab_available, make_isaaclab_env
from dreamer.env.mujoco_env import MujocoBatchedEnv
from dreamer.replay.buffer import select_for_storage

if not isaaclab_available():
    # (not a bare find_spec: with tests/ on sys.path, this very folder is a namespace "isaaclab")
    pytest.skip("Isaac Lab is not installed in this interpreter", allow_module_level=True)

pytestmark = pytest.mark.isaaclab

NUM_ENVS = 8
# 0.25 s at step_dt 1/60 = 15 control steps per episode: several episode ends in a short rollout
EPISODE_S = 0.25
EPISODE_STEPS = 15
OBS_DIM, ACT_DIM = 60, 8


def _count_isaac_resets(env) -> dict:
    """Wrap Isaac's ``_reset_idx`` to count how often each sub-env is reset."""
    unwrapped = env._env.unwrapped
    counts = {"per_env": torch.zeros(env.batch_size[0], dtype=torch.long)}
    original = unwrapped._reset_idx

    def counting(env_ids, *args, **kwargs):
        if isinstance(env_ids, slice) or env_ids is None:  # a full reset
            counts["per_env"] += 1
        else:
            ids = torch.as_tensor(getattr(env_ids, "torch", env_ids)).reshape(-1).long().cpu()
            counts["per_env"].index_add_(0, ids, torch.ones_like(ids))
        return original(env_ids, *args, **kwargs)

    unwrapped._reset_idx = counting
    return counts


@pytest.fixture(scope="class")
def env():
    """One Isaac-Ant env per test class (launching costs ~15 s); closed before the pixel test."""
    env = make_isaaclab_env(
        "Isaac-Ant-v0", num_envs=NUM_ENVS, device="cpu", seed=0, episode_length_s=EPISODE_S
    )
    yield env
    env.close()


def _check_rollout(td, steps: int) -> torch.Tensor:
    """Types, finiteness and terminal-obs semantics of a [N, T] rollout; returns done [N, T]."""
    assert td.batch_size == torch.Size([NUM_ENVS, steps])
    for key in ("policy", ("next", "policy"), ("next", "reward"), "action"):
        assert td[key].dtype == torch.float32, key
        assert torch.isfinite(td[key]).all(), key
    for key in ("done", "terminated", "truncated", "final_obs_valid"):
        assert td["next", key].dtype == torch.bool
        assert td["next", key].shape == (NUM_ENVS, steps, 1)
    done = td["next", "done"].squeeze(-1)
    assert done.any()
    # Isaac Lab 3.0 provides final_obs: valid everywhere
    assert td["next", "final_obs_valid"].all()
    nxt, root, action = td["next", "policy"], td["policy"], td["action"]
    for e, t in done.nonzero().tolist():
        # the last 8 obs entries are the last action: the true final obs carries this step's
        # action, the reset obs (what TorchRL 0.14.1 would have left, or NaN) carries zeros
        assert torch.allclose(nxt[e, t, -ACT_DIM:], action[e, t], atol=1e-5)
        # base height continues smoothly from the step's input obs
        assert abs(nxt[e, t, 0] - root[e, t, 0]) < 0.1
        if t + 1 < steps:
            # the following step starts from Isaac's reset obs: zero last action
            assert torch.all(root[e, t + 1, -ACT_DIM:] == 0)
            assert not torch.allclose(nxt[e, t], root[e, t + 1])
    # not done: next obs is the next step's root obs
    same = ~done[:, :-1]
    assert torch.equal(nxt[:, :-1][same], root[:, 1:][same])
    return done


def assert_same_interface_as_embedded(env, task: str) -> None:
    """Same spec keys, shapes, dtypes and types as the embedded env, and the same replay entries.

    ``final_obs_valid`` is the one spec key only Isaac Lab has (the embedded env always returns
    the true final obs); :func:`select_for_storage` stores it for both backends.
    """
    ref = MujocoBatchedEnv(task, num_envs=env.batch_size[0], device="cpu", seed=0)
    try:
        for name in (
            "full_observation_spec",
            "full_action_spec",
            "full_reward_spec",
            "full_done_spec",
        ):
            ours, theirs = getattr(env, name), getattr(ref, name)
            keys = set(ours.keys(True, True)) - {"final_obs_valid"}
            assert keys == set(theirs.keys(True, True)), name
            for key in keys:
                assert ours[key].shape == theirs[key].shape, (name, key)
                assert ours[key].dtype == theirs[key].dtype, (name, key)
                assert type(ours[key]) is type(theirs[key]), (name, key)
        assert torch.equal(env.action_spec.space.low, ref.action_spec.space.low)
        assert torch.equal(env.action_spec.space.high, ref.action_spec.space.high)
        stored = [
            select_for_storage(
                TransformedEnv(e, InitTracker()).rollout(3, break_when_any_done=False)
            )
            for e in (env, ref)
        ]
        ours, theirs = (dict(td.items(True, True)) for td in stored)
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            assert value.shape == theirs[key].shape and value.dtype == theirs[key].dtype, key
    finally:
        ref.close()


class TestAntState:
    """Isaac-Ant, state observations."""

    def test_specs(self, env):
        n = NUM_ENVS
        assert env.batch_size == torch.Size([n])
        assert env.device == torch.device("cpu")
        assert isinstance(env.action_spec, Bounded)
        assert env.action_spec.shape == (n, ACT_DIM) and env.action_spec.dtype == torch.float32
        assert (env.action_spec.space.low == -1).all() and (env.action_spec.space.high == 1).all()
        assert env.observation_spec["policy"].shape == (n, OBS_DIM)
        assert env.observation_spec["policy"].dtype == torch.float32
        assert env.observation_spec["final_obs_valid"].shape == (n, 1)
        assert env.reward_spec.shape == (n, 1) and env.reward_spec.dtype == torch.float32
        for key in ("done", "terminated", "truncated"):
            assert env.full_done_spec[key].shape == (n, 1)
            assert env.full_done_spec[key].dtype == torch.bool

    def test_offline_ant_asset_has_mjcf_mass(self, env):
        if "dreamer-isaaclab" not in os.environ.get(
            "ISAACSIM_ASSET_ROOT", ""
        ) and not os.environ.get("DREAMER_ISAAC_ASSET_ROOT"):
            pytest.skip("not using our offline asset root")
        robot = env._env.unwrapped.scene["robot"]
        mass = torch.as_tensor(
            robot.data.body_mass.torch
            if hasattr(robot.data.body_mass, "torch")
            else robot.data.body_mass
        )
        assert torch.allclose(mass.sum(-1), torch.full((NUM_ENVS,), 0.9109), atol=2e-3)

    def test_rollout_terminal_obs(self, env):
        counts = _count_isaac_resets(env)
        steps = 2 * EPISODE_STEPS + 5
        td = env.rollout(steps, break_when_any_done=False)
        done = _check_rollout(td, steps)
        assert done.sum() >= 2 * NUM_ENVS  # every env finished at least two episodes
        # rollout's initial reset, then one Isaac reset (inside step) per finished episode: TorchRL's
        # reset after a done step (all 8 envs finish together here) does not reset them again
        assert torch.equal(counts["per_env"], 1 + done.sum(1))

    def test_staggered_episode_ends(self, env):
        td0 = env.reset()
        # start the envs at different points of their episodes (as Isaac Lab's training scripts
        # do), so that only some envs finish on a given step and TorchRL's resets are partial
        unwrapped = env._env.unwrapped
        unwrapped.episode_length_buf[:] = torch.arange(NUM_ENVS) % EPISODE_STEPS
        counts = _count_isaac_resets(env)
        steps = EPISODE_STEPS + 3
        td = env.rollout(steps, break_when_any_done=False, auto_reset=False, tensordict=td0)
        done = _check_rollout(td, steps)
        assert (done.sum(0) < NUM_ENVS).all() and (done.sum(0) > 0).sum() >= 2
        assert torch.equal(counts["per_env"], done.sum(1))

    def test_same_interface_as_the_embedded_env(self, env):
        assert_same_interface_as_embedded(env, "Isaac-Ant-v0")

    # Last in the class: the collector closes the env it was given (also when garbage-collected).
    def test_collector_replay_buffer_no_aliasing(self, env):
        frames = NUM_ENVS * 10
        collector = Collector(env, policy=None, frames_per_batch=frames, total_frames=3 * frames)
        rb = ReplayBuffer(storage=LazyTensorStorage(10_000, ndim=2))
        snapshots = []
        for batch in collector:
            rb.extend(batch)
            snapshots.append(batch.clone())
        collector.shutdown()
        stored = rb.storage[:]  # [time, env]
        data = torch.cat(snapshots, dim=1)
        for key in (
            "policy",
            ("next", "policy"),
            ("next", "reward"),
            ("next", "done"),
            ("next", "terminated"),
            ("next", "truncated"),
            ("next", "final_obs_valid"),
        ):
            assert torch.equal(stored[key].transpose(0, 1), data[key]), key
        assert torch.isfinite(stored["next", "policy"]).all()
        assert stored["next", "done"].any()


def test_cartpole_same_interface_as_the_embedded_env():
    """Isaac-Cartpole (offline asset from the newton wheel) against the embedded replica."""
    env = make_isaaclab_env("Isaac-Cartpole-v0", num_envs=4, device="cpu", seed=0)
    try:
        robot = env._env.unwrapped.scene["robot"]
        assert list(robot.joint_names) == ["slider_to_cart", "cart_to_pole"]
        assert_same_interface_as_embedded(env, "Isaac-Cartpole-v0")
    finally:
        env.close()


def test_tiled_camera_pixels():
    """newton_warp tiled camera: uint8 (N, 64, 64, 3) images in which the Ant is visible."""
    env = make_isaaclab_env(
        "Isaac-Ant-v0",
        num_envs=2,
        device="cpu",
        seed=0,
        episode_length_s=EPISODE_S,
        pixels={"width": 64, "height": 64, "renderer_backend": "newton_warp"},
    )
    try:
        assert env.observation_spec["pixels"].shape == (2, 64, 64, 3)
        assert env.observation_spec["pixels"].dtype == torch.uint8
        td = env.rollout(EPISODE_STEPS + 2, break_when_any_done=False)
        pixels = td["next", "pixels"]
        assert pixels.dtype == torch.uint8 and pixels.shape[-3:] == (64, 64, 3)
        gray = pixels.float().mean(-1)  # [N, T, H, W]
        assert gray.std() > 10  # not blank
        # the Ant is a dark shape on a light background, near the image centre
        background = gray.flatten(2).median(-1).values
        dark = gray < 0.6 * background[..., None, None]
        assert (dark.flatten(2).float().mean(-1) > 0.02).all()
        centre = dark[..., 16:48, 16:48].flatten(2).float().mean(-1)
        assert (centre > 0.05).all()
        # the camera frame at a done step is not the true final frame: flagged invalid there
        done = td["next", "done"].squeeze(-1)
        assert done.any()
        assert torch.equal(td["next", "final_obs_valid"].squeeze(-1), ~done)
    finally:
        env.close()
