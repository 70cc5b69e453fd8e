"""Isaac Lab backend against the stand-in of ``isaac_standin.py`` (same-step autoreset, in-place
buffers, staggered episode ends), injected by the ``fake_isaaclab`` fixture (conftest.py).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.data import Bounded, LazyTensorStorage, ReplayBuffer
from torchrl.envs.utils import check_env_specs

from isaac_backend import isaac_standin as standin  # skips this module without gymnasium

gym = standin.gym
ACT_DIM, OBS_DIM = standin.ACT_DIM, standin.OBS_DIM
FakeManagerBasedRLEnv = standin.FakeManagerBasedRLEnv
make_cfg, make_env = standin.make_cfg, standin.make_env
expected_episode_ends = standin.expected_episode_ends
# --------------------------------------------------------------------------- tests


def test_specs_match_the_mujoco_env_interface(fake_isaaclab):
    env = make_env(make_cfg())
    assert env.batch_size == torch.Size([4])
    assert isinstance(env.action_spec, Bounded)
    assert env.action_spec.shape == (4, ACT_DIM) and env.action_spec.dtype == torch.float32
    assert torch.all(env.action_spec.space.low == -1) and torch.all(env.action_spec.space.high == 1)
    assert env.observation_spec["policy"].shape == (4, OBS_DIM)
    assert env.observation_spec["policy"].dtype == torch.float32
    assert env.observation_spec["final_obs_valid"].dtype == torch.bool
    assert env.reward_spec.shape == (4, 1) and env.reward_spec.dtype == torch.float32
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].shape == (4, 1)
        assert env.full_done_spec[key].dtype == torch.bool
    check_env_specs(env)


@pytest.mark.parametrize("compute_final_obs", [True, False, None])
def test_rollout_terminal_obs(fake_isaaclab, compute_final_obs):
    cfg = make_cfg(compute_final_obs=compute_final_obs)
    env = make_env(cfg)
    steps = 20
    td = env.rollout(steps, break_when_any_done=False)
    fake = env._env.unwrapped
    done = td["next", "done"].squeeze(-1)
    ends = {tuple(x) for x in done.nonzero().tolist()}
    assert ends == expected_episode_ends(cfg.trunc_len, steps)
    # staggered: at some step only some envs finish; also env 1 terminates, others truncate
    assert td["next", "terminated"].any() and td["next", "truncated"].any()
    nxt, root = td["next", "policy"], td["policy"]
    valid = td["next", "final_obs_valid"].squeeze(-1)
    assert not torch.isnan(nxt).any() and not torch.isnan(root).any()
    has_final = bool(compute_final_obs)
    for e, t in ends:
        if has_final:
            # the true terminal obs: same episode as the step's input, one step further
            assert nxt[e, t, 0] == root[e, t, 0]
            assert nxt[e, t, 1] == root[e, t, 1] + 1
            assert valid[e, t]
        else:
            # the reset obs, flagged so the decoder loss can skip it
            assert nxt[e, t, 1] == 0 and nxt[e, t, 0] == root[e, t, 0] + 1
            assert not valid[e, t]
        if t + 1 < steps:
            # the next step starts from Isaac's reset obs (new episode, step 0)
            assert root[e, t + 1, 0] == root[e, t, 0] + 1 and root[e, t + 1, 1] == 0
    assert valid[~done].all()
    # not done: next obs is the following root obs
    same = ~done[:, :-1]
    assert torch.equal(nxt[:, :-1][same], root[:, 1:][same])
    # no double reset: each env was reset once at start and once per finished episode
    expected_resets = 1 + done.sum(1)
    assert torch.equal(fake.reset_calls, expected_resets)


def test_all_envs_done_on_the_same_step_is_not_reset_twice(fake_isaaclab):
    # TorchRL's own wrapper answers an all-True reset mask with a second, full Isaac reset
    env = make_env(make_cfg(trunc_len=(3, 3, 3, 3), fall_env=-1))
    td = env.rollout(9, break_when_any_done=False)
    fake = env._env.unwrapped
    done = td["next", "done"].squeeze(-1)
    assert done[:, 2].all() and done[:, 5].all() and done.sum() == 12
    assert torch.equal(fake.reset_calls, 1 + done.sum(1))
    assert (td["policy"][:, 3, 1] == 0).all() and (td["policy"][:, 3, 0] == 2).all()
    assert (td["next", "policy"][:, 2, 1] == 3).all()


def test_collector_replay_buffer_contents_and_no_aliasing(fake_isaaclab):
    cfg = make_cfg()
    env = make_env(cfg)
    n, t = 4, 8
    collector = Collector(env, policy=None, frames_per_batch=n * t, total_frames=n * t * 3)
    rb = ReplayBuffer(storage=LazyTensorStorage(1000, ndim=2))
    snapshots = []
    for batch in collector:
        assert batch.batch_size == torch.Size([n, t])
        rb.extend(batch)
        # what was stored must not change when the env keeps stepping (Isaac reuses its buffers)
        snapshots.append(batch.clone())
    collector.shutdown()
    # the collector's batches are [env, time]; an ndim=2 storage keeps them time-major
    stored = rb.storage[:]
    assert stored.batch_size == torch.Size([3 * t, n])
    data = torch.cat(snapshots, dim=1)
    for key in (
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
        ("next", "truncated"),
        ("next", "policy"),
        "policy",
        ("next", "final_obs_valid"),
    ):
        assert torch.equal(stored[key].transpose(0, 1), data[key]), key
    nxt, root = data["next", "policy"], data["policy"]
    done = data["next", "done"].squeeze(-1)
    assert done.any()
    assert not torch.isnan(nxt).any()
    # reward equals what the env computed at that step (step_in_episode of next obs * 10 + env)
    steps_in_ep = nxt[..., 1]
    assert torch.equal(data["next", "reward"].squeeze(-1), steps_in_ep * 10 + nxt[..., 2])
    # terminal obs at done steps are the true final ones
    assert (nxt[..., 0][done] == root[..., 0][done]).all()
    assert (nxt[..., 1][done] == root[..., 1][done] + 1).all()
    assert data["next", "final_obs_valid"].all()


def test_collector_without_final_obs_marks_invalid_only_at_done(fake_isaaclab):
    env = make_env(make_cfg(compute_final_obs=False))
    collector = Collector(env, policy=None, frames_per_batch=4 * 10, total_frames=4 * 20)
    rb = ReplayBuffer(storage=LazyTensorStorage(1000, ndim=2))
    for batch in collector:
        rb.extend(batch)
    collector.shutdown()
    data = rb.storage[:]  # [time, env]
    done = data["next", "done"].squeeze(-1)
    valid = data["next", "final_obs_valid"].squeeze(-1)
    assert done.any()
    assert torch.equal(valid, ~done)
    assert not torch.isnan(data["next", "policy"]).any()
    assert (data["next", "policy"][..., 1][done] == 0).all()  # the reset obs, not NaN


def test_actions_are_clamped_to_the_declared_bounds(fake_isaaclab):
    env = make_env(make_cfg())
    td = env.reset()
    td["action"] = torch.full((4, ACT_DIM), 5.0)
    out = env.step(td)
    assert env._env.unwrapped.max_abs_action == 1.0
    assert torch.allclose(out["next", "policy"][:, 3], torch.full((4,), float(ACT_DIM)))
    assert (td["action"] == 5.0).all()  # the caller's tensordict is not modified


def test_returned_buffers_do_not_alias_isaac_buffers(fake_isaaclab):
    env = make_env(make_cfg())
    fake = env._env.unwrapped
    td = env.reset()
    td["action"] = torch.zeros(4, ACT_DIM)
    out = env.step(td)["next"]
    for key, buf in (
        ("reward", fake.reward_buf),
        ("terminated", fake.reset_terminated),
        ("truncated", fake.reset_time_outs),
    ):
        assert out[key].untyped_storage().data_ptr() != buf.untyped_storage().data_ptr(), key


def test_explicit_partial_reset_resets_only_requested_envs(fake_isaaclab):
    env = make_env(make_cfg(trunc_len=(50, 50, 50, 50)))
    fake = env._env.unwrapped
    td = env.reset()
    td["action"] = torch.zeros(4, ACT_DIM)
    td = env.step(td)["next"]
    td["_reset"] = torch.tensor([[True], [False], [False], [True]])
    out = env.reset(td)
    assert fake.reset_calls.tolist() == [2, 1, 1, 2]
    assert out["policy"][:, 1].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert out["final_obs_valid"].all()


def test_resolve_task_ids():
    from dreamer.env.isaaclab_env import resolve_isaaclab_task_id

    for task in ("Isaac-Ant", "Isaac-Cartpole", "Isaac-Humanoid", "Isaac-Ant-Direct"):
        assert resolve_isaaclab_task_id(f"{task}-v0", "3.0.0") == task
        assert resolve_isaaclab_task_id(task, (3, 0)) == task
        assert resolve_isaaclab_task_id(f"{task}-v0", "2.3.2") == f"{task}-v0"
        assert resolve_isaaclab_task_id(task, 2) == f"{task}-v0"


@pytest.mark.parametrize("version", ["3.0.0", "2.3.2"])
def test_make_isaaclab_env_with_standin_tasks(fake_isaaclab, monkeypatch, version):
    """make_isaaclab_env's config plumbing, with stand-ins for isaaclab_tasks and AppLauncher."""
    import dreamer.env.isaaclab_env as ile

    major = int(version[0])
    calls: dict = {}

    def parse_env_cfg(task_id, device=None, num_envs=None, use_fabric=None, overrides=()):
        calls.update(task_id=task_id, device=device, num_envs=num_envs, overrides=list(overrides))
        # 2.x configs have no compute_final_obs field
        return make_cfg(num_envs=num_envs, compute_final_obs=False if major >= 3 else None)

    tasks = types.ModuleType("isaaclab_tasks")
    tasks.__path__ = []
    utils = types.ModuleType("isaaclab_tasks.utils")
    utils.parse_env_cfg = parse_env_cfg
    app = types.ModuleType("isaaclab.app")

    class AppLauncher:
        def __init__(self, **kwargs):
            calls["app"] = kwargs

    app.AppLauncher = AppLauncher
    monkeypatch.setitem(sys.modules, "isaaclab_tasks", tasks)
    monkeypatch.setitem(sys.modules, "isaaclab_tasks.utils", utils)
    monkeypatch.setitem(sys.modules, "isaaclab.app", app)
    monkeypatch.setattr(ile, "isaaclab_available", lambda: True)
    monkeypatch.setattr(ile, "installed_isaaclab_version", lambda: ile._parse_version(version))
    monkeypatch.setattr(ile, "_APP_LAUNCHERS", [])
    monkeypatch.setenv("DREAMER_ISAAC_ASSET_ROOT", "cloud")
    monkeypatch.setenv("TD_GET_DEFAULTS_TO_NONE", "1")  # make_isaaclab_env sets it; restore after
    task_id = "Isaac-Ant" if major >= 3 else "Isaac-Ant-v0"
    monkeypatch.setitem(
        gym.registry,
        task_id,
        gym.envs.registration.EnvSpec(
            task_id,
            entry_point=lambda cfg, **kw: FakeManagerBasedRLEnv(cfg),
            disable_env_checker=True,
        ),
    )

    env = ile.make_isaaclab_env(
        "Isaac-Ant-v0", num_envs=3, device="cpu", seed=7, episode_length_s=2.0
    )
    assert calls["task_id"] == task_id and calls["num_envs"] == 3 and calls["device"] == "cpu"
    fake = env._env.unwrapped
    assert fake.cfg.seed == 7 and fake.cfg.episode_length_s == 2.0
    if major >= 3:
        assert calls["overrides"] == ["physics=newton_mjwarp"]
        assert fake.cfg.compute_final_obs is True and "app" not in calls
    else:
        assert calls["app"]["headless"] is True
    td = env.rollout(12, break_when_any_done=False)
    done = td["next", "done"].squeeze(-1)
    assert done.any()
    # 3.x provides final_obs (valid everywhere); the 2.x stand-in cannot (invalid at done only)
    expected_valid = torch.ones_like(done) if major >= 3 else ~done
    assert torch.equal(td["next", "final_obs_valid"].squeeze(-1), expected_valid)
    assert not torch.isnan(td["next", "policy"]).any()


def test_with_episode_stats_transforms(fake_isaaclab):
    """The transforms the trainer adds (RewardSum, StepCounter) see the autoreset boundaries."""
    from dreamer.env.factory import add_episode_stats

    env = add_episode_stats(make_env(make_cfg()))
    collector = Collector(env, policy=None, frames_per_batch=4 * 12, total_frames=4 * 24)
    for batch in collector:
        assert batch["next", "done"].any()
        steps = batch["next", "step_count"].squeeze(-1)
        # StepCounter counts within an episode exactly like the stand-in's own step counter
        # (the true final obs at done steps carries the episode's last step index)
        assert torch.equal(steps.float(), batch["next", "policy"][..., 1])
        # the episode return restarts after each end
        ep_ret = batch["next", "episode_reward"].squeeze(-1)
        first = batch["next", "policy"][..., 1] == 1
        assert torch.allclose(ep_ret[first], batch["next", "reward"].squeeze(-1)[first])
    collector.shutdown()


def test_unknown_camera_setting_is_rejected_before_isaac_lab_starts(monkeypatch):
    import dreamer.env.isaaclab_env as ile

    monkeypatch.setattr(ile, "isaaclab_available", lambda: True)
    monkeypatch.setattr(ile, "installed_isaaclab_version", lambda: (3, 0, 0))
    monkeypatch.setattr(ile, "_configure_asset_root", lambda *a: pytest.fail("started Isaac Lab"))
    with pytest.raises(ValueError, match=r"Unknown camera settings \['fov'\] in env.camera"):
        ile.make_isaaclab_env("Isaac-Ant-v0", 2, "cpu", 0, pixels={"width": 64, "fov": 60})
