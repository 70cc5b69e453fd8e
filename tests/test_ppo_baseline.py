"""The rsl_rl PPO baseline (bench/ppo_rsl_rl.py): its env adapter, its curves and its input check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

pytest.importorskip("rsl_rl", reason="needs the baselines extra (rsl-rl-lib)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import ppo_rsl_rl  # noqa: E402
from rsl_rl_env import RslRlVecEnv  # noqa: E402

from dreamer.env.mujoco_env import MujocoBatchedEnv  # noqa: E402

TASK = "Isaac-Cartpole-v0"


def test_adapter_resets_in_step_and_reports_time_outs():
    """Isaac Lab's contract: reset observations after a done step, time_outs = truncated."""
    n, horizon = 8, 40
    adapted = RslRlVecEnv(MujocoBatchedEnv(TASK, n, seed=3, max_episode_length=horizon))
    # A twin env driven through plain TorchRL calls: step, then a masked reset of finished envs.
    twin = MujocoBatchedEnv(TASK, n, seed=3, max_episode_length=horizon)
    root = twin.reset()
    assert torch.equal(adapted.get_observations()["policy"], root["policy"])
    # Full force on half the envs drives their carts out of bounds (terminated) before the
    # time limit; the other half time out.
    actions = torch.zeros(n, 1)
    actions[: n // 2] = 1.0
    returns, seen_terminated = torch.zeros(n), False
    for _ in range(2 * horizon + 10):
        obs, rewards, dones, extras = adapted.step(actions)
        after = twin.step(root.clone().set("action", actions)).get("next")
        done = after["done"].squeeze(-1)
        reset = twin.reset(TensorDict({"_reset": after["done"]}, batch_size=[n]))
        expected = torch.where(done[:, None], reset["policy"], after["policy"])
        root = TensorDict({"policy": expected}, batch_size=[n])
        assert torch.equal(obs["policy"], expected)
        assert torch.equal(rewards, after["reward"].squeeze(-1))
        assert torch.equal(dones, done.long())
        assert torch.equal(extras["time_outs"], after["truncated"].squeeze(-1))
        seen_terminated |= bool(after["terminated"].any())
        returns += rewards
        if done.any():
            # The reset observation is a new episode's, not the final one.
            assert not torch.equal(obs["policy"][done], after["policy"][done])
            assert (adapted.episode_length_buf[done] == 0).all()
            stats = adapted.pop_episode_stats()
            assert stats["episode/count"] == int(done.sum())
            assert stats["episode/return"] == pytest.approx(float(returns[done].mean()))
            returns[done] = 0.0
    assert seen_terminated, "no termination seen: the test lost its terminated case"
    # rsl_rl starts episodes at random lengths by writing episode_length_buf: the env's time
    # limit must count from the written lengths.
    adapted.episode_length_buf = torch.full((n,), horizon - 1)
    assert (adapted.episode_length_buf == horizon - 1).all()
    _, _, dones, extras = adapted.step(torch.zeros(n, 1))
    assert extras["time_outs"].all() and dones.all()
    adapted.close()
    twin.close()


def test_ppo_trains_and_logs_dreamer_tags(tmp_path):
    logdir = tmp_path / "ppo"
    # 64 envs x 16 steps = 1024 frames an iteration.
    summary = ppo_rsl_rl.main(
        [
            f"--task={TASK}",
            "--num-envs=64",
            "--device=cpu",
            "--env-device=cpu",
            "--seed=0",
            "--max-frames=6144",
            f"--logdir={logdir}",
        ]
    )
    assert summary["frames"] == 6144 and summary["iterations"] == 6
    assert summary["actor_param_change"] > 0, "PPO left the policy unchanged"
    assert (logdir / "model_final.pt").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / "tensorboard"))
    acc.Reload()
    for tag in ("episode/return", "time/elapsed_s", "perf/env_steps_per_s"):
        steps = [event.step for event in acc.Scalars(tag)]
        assert len(steps) >= 2 and steps == sorted(set(steps)), (tag, steps)
        assert set(steps) <= {1024 * i for i in range(1, 7)}, (tag, steps)
    elapsed = [event.value for event in acc.Scalars("time/elapsed_s")]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0


def test_unknown_task_fails_before_building_the_env(monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("env built for an unknown task")

    monkeypatch.setattr(ppo_rsl_rl, "make_base_env", forbidden)
    with pytest.raises(ValueError, match="Isaac-Ant-v0, Isaac-Cartpole-v0"):
        ppo_rsl_rl.main(["--task=Isaac-Humanoid-v0", "--device=cpu", f"--logdir={tmp_path}"])
    assert not any(tmp_path.iterdir())
