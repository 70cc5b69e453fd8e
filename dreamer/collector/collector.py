"""Collection: TorchRL's ``Collector`` stepping the batched env with the acting policy."""

from __future__ import annotations

import torch
from torchrl.collectors import Collector
from torchrl.envs import EnvBase


def make_collector(
    cfg, env: EnvBase, policy, policy_device: torch.device | None = None
) -> Collector:
    """A single in-process collector over the pre-vectorised env (``collector.backend=local``).

    ``collector.backend=ray`` hands over to :func:`dreamer.collector.ray_collector.make_ray_collector`
    (Ray workers with envs of their own; ``env`` then only gave the agent its specs).
    ``no_cuda_sync`` is set for CUDA envs (Isaac Lab or a GPU-resident replica): the collector's
    explicit syncs would otherwise stall the simulator's stream every step.
    """
    if cfg.collector.backend == "ray":
        from dreamer.collector.ray_collector import make_ray_collector

        return make_ray_collector(cfg, policy)
    env_device = torch.device(cfg.env.device)
    return Collector(
        env,
        policy,
        frames_per_batch=int(cfg.collector.frames_per_batch),
        total_frames=int(cfg.collector.total_frames),
        init_random_frames=int(cfg.collector.init_random_frames),
        storing_device=torch.device(cfg.collector.storing_device),
        env_device=env_device,
        policy_device=policy_device or torch.device(cfg.device),
        no_cuda_sync=env_device.type == "cuda",
        trust_policy=True,
    )


def make_batch_source(cfg, env: EnvBase, policy):
    """Where training batches come from: the collector itself (``pipeline.mode=sync``), or the
    collector running ahead in a background thread with its own acting copy of ``policy``
    (``pipeline.mode=async``, see :mod:`dreamer.collector.background`)."""
    mode = str(cfg.pipeline.mode)
    if mode == "sync":
        return make_collector(cfg, env, policy)
    from dreamer.collector.background import BackgroundCollector

    acting_device = torch.device(cfg.pipeline.acting_device or cfg.env.device)

    def build(acting_policy):
        return make_collector(cfg, env, acting_policy, policy_device=acting_device)

    return BackgroundCollector(
        build, policy, acting_device, max_batches_ahead=int(cfg.pipeline.max_batches_ahead)
    )
