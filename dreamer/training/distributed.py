"""Data-parallel learner: one process per GPU (or CPU core), gradients averaged across ranks.

Launch with ``torchrun --nproc_per_node=K train_dreamer.py ... [distributed.enabled=true]``
(a ``WORLD_SIZE`` above 1 in the environment turns it on too). Every rank steps its own envs
(its own seed) into its own replay, computes all DreamerV3 losses on its own batch, and before
each optimizer step the gradients are averaged across ranks, as DreamerV3 does across devices.
Ranks start from rank 0's parameters and apply identical averaged gradients to identical
optimizer states, so they stay identical; rank 0 alone logs, evaluates and checkpoints.

Why not ``DistributedDataParallel``: DDP averages gradients in hooks on its wrapper's
``forward``; TorchRL's loss modules call the world model, actor and critic directly (and the
actor loss re-enters the world model's prior through the imagination env), so a DDP wrapper
would never see those calls. Averaging the gradients in one ``all_reduce`` per parameter group
after ``backward`` needs no wrapper and works with any call pattern.

Why the averaged gradient is the combined-batch gradient: every DreamerV3 loss term is a mean
over batch (and time) of per-element terms, so with equal per-rank batches the mean of the
per-rank gradients equals the gradient of the loss on the concatenated batch. The one
exception is the actor's return normaliser, whose percentiles are taken per batch; its EMA
state is averaged across ranks after each step (:func:`sync_return_normalizer`) so ranks do
not drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job; ``world_size == 1`` means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when there is more than one rank."""
        return self.world_size > 1


def derive_seed(seed: int, *path: int) -> int:
    """An independent 31-bit seed for the stream ``path`` (e.g. rank, worker) of run ``seed``."""
    if not path or not any(path):
        return int(seed)
    return int(np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(1)[0] >> 1)


def distributed_requested(cfg: DictConfig) -> bool:
    """``distributed.enabled=true`` or a launcher (torchrun) that set ``WORLD_SIZE`` > 1."""
    return bool(cfg.distributed.enabled) or int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(cfg: DictConfig) -> DistContext:
    """Join the process group torchrun set up; per-rank device and seed are written into ``cfg``.

    On CUDA each rank takes ``cuda:<LOCAL_RANK>``; rank ``r > 0`` gets seed
    ``derive_seed(seed, r)`` so its envs and sampling differ from rank 0's.
    """
    from dreamer.training.config_check import ConfigError

    if not distributed_requested(cfg):
        return DistContext()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            "distributed.enabled=true needs a launcher that sets RANK/WORLD_SIZE/MASTER_ADDR: run "
            "`torchrun --nproc_per_node=<gpus> train_dreamer.py ...`, or drop distributed.enabled."
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device(cfg.device)
    backend = str(cfg.distributed.backend)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        cfg.device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    cfg.seed = derive_seed(int(cfg.seed), rank)
    return DistContext(rank, world_size, local_rank)


def average_tensors(tensors: Iterable[torch.Tensor], world_size: int) -> None:
    """Replace each tensor by its mean over ranks: one ``all_reduce`` per dtype/device bucket."""
    if world_size <= 1:
        return
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        buckets.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for bucket in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in bucket])
        # ReduceOp.AVG exists only on NCCL; SUM then divide works on gloo too.
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        for tensor, chunk in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            tensor.copy_(chunk.view_as(tensor))


def average_gradients(params: Iterable[torch.Tensor], world_size: int) -> None:
    """Average ``.grad`` of ``params`` across ranks in place (call after backward, before step).

    Parameters without a gradient are skipped; which ones those are depends only on the model's
    structure, so every rank skips the same ones and the buckets line up.
    """
    average_tensors([p.grad for p in params if p.grad is not None], world_size)


def average_optimizer_gradients(optimizer: torch.optim.Optimizer, world_size: int) -> None:
    """:func:`average_gradients` for each parameter group (world model, actor, critic)."""
    for group in optimizer.param_groups:
        average_gradients(group["params"], world_size)


def sync_return_normalizer(loss: torch.nn.Module, world_size: int) -> None:
    """Average the actor loss's return-percentile EMA (``retnorm.low/high``) across ranks."""
    retnorm = loss.actor_loss.retnorm
    average_tensors([retnorm.low, retnorm.high], world_size)


def broadcast_state(modules: Iterable[torch.nn.Module], src: int = 0) -> None:
    """Copy every parameter and buffer of ``modules`` from rank ``src`` to all ranks in place."""
    seen: set[int] = set()
    for module in modules:
        for tensor in module.state_dict().values():
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            dist.broadcast(tensor, src=src)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if ctx.enabled:
        dist.barrier()


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def average_agent_gradients(agent, world_size: int) -> None:
    """The ``update_step`` grad hook of the data-parallel learner.

    Averages the world-model, actor and critic gradients (one bucket per parameter group) and
    the return normaliser's state, so every rank takes the same optimizer step.
    """
    average_optimizer_gradients(agent.optimizer, world_size)
    sync_return_normalizer(agent.loss, world_size)


def check_in_sync(modules: Iterable[torch.nn.Module], ctx: DistContext) -> None:
    """Raise if any rank's parameters or buffers differ from rank 0's (per-tensor checksums)."""
    sums = torch.stack(
        [t.detach().double().sum().cpu() for m in modules for t in m.state_dict().values()]
    )
    gathered = [torch.empty_like(sums) for _ in range(ctx.world_size)]
    dist.all_gather_object(gathered, sums)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(
                f"rank {rank}'s parameters differ from rank 0's after training: the ranks did not "
                "take identical optimizer steps (a non-deterministic or rank-local update?)."
            )


class NullLogger:
    """The logger of ranks other than 0: they compute the same metrics and write nothing."""

    def log(self, values: dict, step: int) -> None:
        """Drop ``values``."""

    def log_figure(self, name: str, figure, step: int) -> None:
        """Drop the figure."""

    def close(self) -> None:
        """Nothing to flush."""
