"""Ray collection on a local 2-CPU Ray cluster with the embedded env."""

from __future__ import annotations

import pytest
import torch
from conftest import load_config
from tensordict import TensorDict

ray = pytest.importorskip("ray")


def _cfg(**overrides):
    cfg = load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        "collector.backend=ray",
        "collector.ray.num_workers=2",
        "env.num_envs=4",
        "collector.frames_per_batch=64",
        "collector.total_frames=192",
        "collector.init_random_frames=64",
        "batch_length=4",
        *(f"{k}={v}" for k, v in overrides.items()),
    )
    cfg.compile.enabled = False
    return cfg


def test_bad_ray_sizes_are_rejected_before_ray_starts():
    from dreamer.training.config_check import ConfigError, validate_config

    with pytest.raises(ConfigError, match="num_workers x env.num_envs = 8"):
        validate_config(_cfg(**{"collector.frames_per_batch": 68}))
    with pytest.raises(ConfigError, match="replay.capacity"):
        validate_config(_cfg(**{"replay.capacity": 20004}))


@pytest.mark.slow
def test_ray_workers_return_env_by_time_batches_and_receive_weights():
    from dreamer.agent import build_agent
    from dreamer.collector.collector import make_collector
    from dreamer.replay.buffer import STORED_KEYS, select_for_storage
    from dreamer.training.loop import make_training_env

    cfg = _cfg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        env = make_training_env(cfg)
        agent = build_agent(cfg, env)
        collector = make_collector(cfg, env, agent.policy)
        workers = collector.collector.remote_collectors
        batches = iter(collector)

        first = next(batches)
        # 2 workers x 4 envs as rows, 64 / 8 = 8 steps each
        assert first.batch_size == torch.Size([8, 8])
        stored = select_for_storage(first)  # what the replay would receive
        for key in STORED_KEYS:
            assert key in stored.keys(True), key
        # each row is one env's consecutive steps: step_count rises by one along time
        steps = first.get(("next", "step_count")).squeeze(-1)
        fresh = first.get(("next", "done")).squeeze(-1)
        assert bool(((steps[:, 1:] == steps[:, :-1] + 1) | fresh[:, :-1]).all())
        # the two workers run differently seeded envs
        assert not torch.equal(first["policy"][:4], first["policy"][4:])

        # change the learner's policy; the next batch must come from workers holding it
        with torch.no_grad():
            for p in agent.policy.parameters():
                p.add_(0.5)
        second = next(batches)
        assert second.batch_size == torch.Size([8, 8])
        learner = TensorDict.from_module(agent.policy).cpu()
        for worker in workers:
            remote = ray.get(worker.get_model.remote("policy"))
            worker_weights = TensorDict.from_module(remote).cpu()
            assert (worker_weights == learner).all()
        collector.shutdown()
    finally:
        ray.shutdown()
