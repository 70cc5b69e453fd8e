"""Collection on Ray workers: TorchRL's ``Collector(backend="ray")`` over several envs/GPUs/nodes.

Each of ``collector.ray.num_workers`` Ray actors builds its own batched env (``env.num_envs``
envs, its own seed) and a copy of the acting policy, and steps it with a TorchRL ``Collector``
(``trust_policy`` and, for CUDA envs, ``no_cuda_sync`` are passed through to it). Collection is
synchronous: each batch holds one rollout ``[num_envs, T]`` per worker, stacked by TorchRL to
``[workers, num_envs, T]`` and flattened here to ``[workers * num_envs, T]`` so the replay's
``[env, time]`` storage keeps each env's steps in one row. (Asynchronous Ray collection hands
out one worker's rollout at a time, which would interleave different workers' envs in the same
storage rows.) Before each collection the learner's current weights are pushed to every worker
with ``update_policy_weights_(TensorDict.from_module(policy))``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from functools import partial

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector

from dreamer.training.distributed import derive_seed


def validate_ray_config(cfg: DictConfig) -> None:
    """Reject a Ray set-up that cannot work, before Ray starts."""
    from dreamer.training.config_check import ConfigError

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(
            "collector.backend=ray needs Ray: pip install 'dreamer-isaaclab[ray]' (or pip install "
            "ray), or set collector.backend=local."
        )
    workers = int(cfg.collector.ray.num_workers)
    if workers <= 0:
        raise ConfigError(f"collector.ray.num_workers must be >= 1, got {workers}.")
    envs = workers * int(cfg.env.num_envs)
    fpb = int(cfg.collector.frames_per_batch)
    if fpb % envs:
        raise ConfigError(
            f"collector.frames_per_batch ({fpb}) must be a multiple of collector.ray.num_workers x "
            f"env.num_envs = {envs}; use e.g. collector.frames_per_batch={max(1, fpb // envs) * envs}."
        )
    needed = int(cfg.batch_length) * envs
    for name in ("frames_per_batch", "init_random_frames"):
        if int(cfg.collector[name]) < needed:
            raise ConfigError(
                f"collector.{name} ({cfg.collector[name]}) must be >= batch_length x "
                f"collector.ray.num_workers x env.num_envs = {needed}, so every env of every "
                f"worker gives a full sequence; set collector.{name}={needed}."
            )
    if int(cfg.replay.capacity) % envs:
        raise ConfigError(
            f"replay.capacity ({cfg.replay.capacity}) must be a multiple of collector.ray.num_workers "
            f"x env.num_envs = {envs} (the storage is [all envs, time])."
        )


def make_worker_env(cfg_container: dict, seed: int):
    """Runs inside a Ray worker: the training env (acting-state primer included) with ``seed``."""
    from dreamer.training.loop import make_training_env

    cfg = OmegaConf.create(cfg_container)
    cfg.seed = seed
    cfg.env.device = cfg.collector.ray.device
    return make_training_env(cfg)


class RayBatches:
    """Iterates a synchronous Ray collector, syncing weights first and flattening worker dims."""

    def __init__(self, collector, policy: torch.nn.Module):
        self.collector = collector
        self.policy = policy

    def push_weights(self) -> None:
        """Send the learner's current policy weights to every worker."""
        self.collector.update_policy_weights_(TensorDict.from_module(self.policy))

    def __iter__(self) -> Iterator[TensorDictBase]:
        batches = iter(self.collector)
        while True:
            # The generator asks the workers for their next rollout only when resumed, so weights
            # pushed here are the ones the next batch is collected with.
            self.push_weights()
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch.reshape(-1, batch.shape[-1])

    def shutdown(self) -> None:
        """Stop the Ray actors (a Ray runtime this collector started is shut down with them)."""
        self.collector.shutdown()


def make_ray_collector(cfg: DictConfig, policy: torch.nn.Module) -> RayBatches:
    """``collector.ray.num_workers`` Ray actors, each a ``Collector`` over its own env."""
    validate_ray_config(cfg)
    ray_cfg = cfg.collector.ray
    workers = int(ray_cfg.num_workers)
    device = torch.device(ray_cfg.device)
    container = OmegaConf.to_container(cfg, resolve=True)
    env_makers = [
        partial(make_worker_env, container, derive_seed(int(cfg.seed), 1 + w))
        for w in range(workers)
    ]
    remote = {"num_cpus": float(ray_cfg.num_cpus_per_worker)}
    if float(ray_cfg.num_gpus_per_worker) > 0:
        remote["num_gpus"] = float(ray_cfg.num_gpus_per_worker)
    init = {"address": ray_cfg.address, "include_dashboard": False, "log_to_driver": False}
    collector = Collector(
        env_makers,
        policy,
        backend="ray",
        sync=True,
        frames_per_batch=int(cfg.collector.frames_per_batch),
        total_frames=int(cfg.collector.total_frames),
        init_random_frames=int(cfg.collector.init_random_frames),
        # Rollouts cross the Ray object store on the host; the replay moves them to its device.
        storing_device=torch.device("cpu"),
        env_device=device,
        policy_device=device,
        no_cuda_sync=device.type == "cuda",
        trust_policy=True,
        backend_options={"ray_init_config": init, "remote_configs": remote},
    )
    batches = RayBatches(collector, policy)
    return batches
