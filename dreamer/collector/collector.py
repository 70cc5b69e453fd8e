"""Collection: TorchRL's ``Collector`` stepping the batched env with the acting policy."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from tensordict.nn import InteractionType
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from dreamer.policy.graphed_acting import GraphedPolicy


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


def graphed_if_enabled(cfg, policy: nn.Module) -> nn.Module:
    """The acting policy as collection runs it: replayed from CUDA graphs when
    ``collector.graph_policy`` (see :mod:`dreamer.policy.graphed_acting`)."""
    return GraphedPolicy(policy) if bool(cfg.collector.graph_policy) else policy


def graph_inside(cfg, wrapper: nn.Module) -> nn.Module:
    """Graph the policy *inside* a locking or weight-syncing wrapper, so that the wrapper's
    weight swaps run on the host between two replays and are never captured."""
    wrapper.policy = graphed_if_enabled(cfg, wrapper.policy)
    return wrapper


def make_batch_source(cfg, env: EnvBase, policy):
    """Where training batches come from: the collector itself (``pipeline.mode=sync``), the
    collector running ahead in a background thread with its own acting copy of ``policy``
    (``pipeline.mode=async``, see :mod:`dreamer.collector.background`), or in a worker process
    with its own env and acting copy (``pipeline.mode=process``, see
    :mod:`dreamer.collector.process`; ``env`` then only gives specs and mirrors the RNG state)."""
    mode = str(cfg.pipeline.mode)
    if mode == "sync":
        return make_collector(cfg, env, graphed_if_enabled(cfg, policy))
    acting_device = torch.device(cfg.pipeline.acting_device or cfg.env.device)
    if mode == "process":
        from functools import partial

        from dreamer.collector.process import ProcessCollector

        return ProcessCollector(
            partial(collection_worker, worker_config(cfg, acting_device)),
            policy,
            acting_device,
            max_batches_ahead=int(cfg.pipeline.max_batches_ahead),
            keys=batch_keys(cfg),
            mirror_env=env,
        )
    from dreamer.collector.background import BackgroundCollector

    def build(locked_policy):
        # The graph keeps the default priority (0), below the acting stream's: captured at the
        # stream's own priority it gave 2-3% less collection at train ratio 0.28 (learner-bound)
        # and no difference at 0.24 (docs/benchmarks.md, "The acting graph's priority").
        locked_policy = graph_inside(cfg, locked_policy)
        if isinstance(locked_policy.policy, GraphedPolicy):
            # Captured here, before the collection thread starts, not beside replay sampling.
            example = env.fake_tensordict().to(acting_device)
            locked_policy.policy.capture(example, InteractionType.RANDOM)
        return make_collector(cfg, env, locked_policy, policy_device=acting_device)

    return BackgroundCollector(
        build, policy, acting_device, max_batches_ahead=int(cfg.pipeline.max_batches_ahead)
    )


def batch_keys(cfg) -> list:
    """What the training loop reads from a batch: stored keys, the model's observations and
    episode stats (the acting state is left in the worker)."""
    from dreamer.replay.buffer import STORED_KEYS
    from dreamer.training.metrics import EPISODE_KEYS
    from dreamer.world_model.observations import obs_keys_from_config

    obs_keys = obs_keys_from_config(cfg.model)
    return [*STORED_KEYS, *obs_keys, *(("next", key) for key in obs_keys), *EPISODE_KEYS]


def worker_config(cfg, acting_device: torch.device) -> dict:
    """``cfg`` for the collection worker: acting on ``acting_device``, nothing compiled.

    Resolved first, so settings that follow ``device`` (``env.device``, ``storing_device``) keep
    the training process's values, as in the thread mode.
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    container["device"] = str(acting_device)
    container["compile"]["enabled"] = False
    return container


def collection_worker(cfg_container: dict):
    """Runs in the ``pipeline.mode=process`` worker: the training env (same config and seed as
    the training process's), an acting policy whose weights the learner's replace, and a
    function that builds the collector around the synced policy."""
    from dreamer.agent import build_agent
    from dreamer.training.loop import make_training_env

    cfg = OmegaConf.create(cfg_container)
    env = make_training_env(cfg)
    policy = build_agent(cfg, env).policy.requires_grad_(False)

    def build(synced_policy):
        synced_policy = graph_inside(cfg, synced_policy)
        return make_collector(cfg, env, synced_policy, policy_device=torch.device(cfg.device))

    return env, policy, build
