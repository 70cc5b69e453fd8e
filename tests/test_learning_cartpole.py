"""Learning evidence on CPU: a tiny world model trained on embedded Isaac-Cartpole-v0 for minutes."""

from __future__ import annotations

import pytest
import torch
from conftest import load_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dreamer.training.loop import train

    cfg = load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        f"logdir={tmp_path_factory.mktemp('cartpole')}",
        "seed=3",
        "env.num_envs=32",
        "collector.frames_per_batch=1024",
        "collector.init_random_frames=2048",
        "collector.total_frames=5120",
        "batch_size=8",
        "batch_length=16",
        "train_ratio=8",
        "optim.world_model_lr=1e-3",
        "log.progress_bar=false",
    )
    cfg.compile.enabled = False
    return train(cfg)


@pytest.mark.slow
def test_world_model_loss_falls_by_half(trained):
    losses = trained["world_model_loss"]
    assert trained["updates"] >= 200
    start, end = losses[:10].mean(), losses[-10:].mean()
    assert end <= 0.5 * start, f"world-model loss fell from {start:.3f} only to {end:.3f}"


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Known gap (issue 2 stays open): Cartpole's pole_pos reward uses the pole angle wrapped to "
    "[-pi, pi] while the observation holds the unwrapped joint angle (as in Isaac Lab), and the tiny "
    "model does not learn the wrap in ~250 CPU updates (r ~ 0.1 measured 2026-11-23).",
)
def test_predicted_rewards_correlate_with_held_out_rewards(trained):
    from dreamer.env.factory import add_episode_stats, make_base_env
    from dreamer.policy.acting import add_acting_state
    from dreamer.replay.buffer import select_for_storage

    agent = trained["agent"]
    env = add_acting_state(
        add_episode_stats(make_base_env("Isaac-Cartpole-v0", 16, "cpu", 1234, "mujoco")),
        agent.size,
        1,
    )
    with torch.no_grad():
        data = env.rollout(120, agent.policy, break_when_any_done=False)
        data = select_for_storage(data)
        real = data["next", "reward"].clone()
        predicted = agent.world_model(data.clone())["next", "reward"]
    r = torch.corrcoef(torch.stack([predicted.flatten(), real.flatten()]))[0, 1]
    assert r >= 0.8, f"predicted vs real reward correlation {r:.3f} < 0.8"
