"""Learning evidence on CPU: a tiny world model learns embedded Isaac-Cartpole-v0 in minutes."""

from __future__ import annotations

import pytest
import torch
from conftest import load_config


@pytest.mark.slow
def test_world_model_learns_cartpole(tmp_path):
    from dreamer.env.factory import add_episode_stats, make_base_env
    from dreamer.policy.acting import add_acting_state
    from dreamer.training.loop import train

    cfg = load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        f"logdir={tmp_path}",
        "seed=3",
        "env.num_envs=32",
        "collector.frames_per_batch=1024",
        "collector.init_random_frames=2048",
        "collector.total_frames=12288",
        "batch_size=8",
        "batch_length=32",
        "train_ratio=128",
        "optim.world_model_lr=1e-3",
        "log.progress_bar=false",
    )
    cfg.compile.enabled = False
    result = train(cfg)
    agent = result["agent"]
    losses = result["world_model_loss"]
    assert result["updates"] >= 200
    start, end = losses[:10].mean(), losses[-10:].mean()
    assert end <= 0.5 * start, f"world-model loss fell from {start:.3f} only to {end:.3f}"

    # Held-out data: a fresh env with another seed, driven by the learned policy.
    env = add_acting_state(
        add_episode_stats(make_base_env("Isaac-Cartpole-v0", 16, "cpu", 1234, "mujoco")),
        agent.size,
        1,
    )
    with torch.no_grad():
        data = env.rollout(200, agent.policy, break_when_any_done=False)
        data = data.select(
            "policy",
            "action",
            "is_init",
            ("next", "policy"),
            ("next", "reward"),
            ("next", "done"),
            ("next", "terminated"),
            ("next", "truncated"),
        )
        real = data["next", "reward"].clone()
        predicted = agent.world_model(data.clone())["next", "reward"]
    r = torch.corrcoef(torch.stack([predicted.flatten(), real.flatten()]))[0, 1]
    assert r >= 0.8, f"predicted vs real reward correlation {r:.3f} < 0.8"
