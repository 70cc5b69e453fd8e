"""Validate the config before anything expensive starts; every error says what to change."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value that cannot work, with the fix in the message."""


def resolve_compile(cfg: DictConfig) -> None:
    """``compile.enabled=auto`` means on for CUDA learners, off on CPU."""
    if str(cfg.compile.enabled) == "auto":
        cfg.compile.enabled = torch.device(cfg.device).type == "cuda"


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for an inconsistent config or a missing resume checkpoint."""
    from dreamer.env.factory import check_task, resolve_backend

    check_task(cfg.task)
    resolve_backend(cfg.env.backend)
    positive = {
        "env.num_envs": cfg.env.num_envs,
        "collector.frames_per_batch": cfg.collector.frames_per_batch,
        "collector.total_frames": cfg.collector.total_frames,
        "batch_size": cfg.batch_size,
        "batch_length": cfg.batch_length,
        "imagination_horizon": cfg.imagination_horizon,
        "replay.capacity": cfg.replay.capacity,
    }
    for name, value in positive.items():
        if int(value) <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value}.")
    if cfg.train_ratio < 0:
        raise ConfigError(f"train_ratio must be >= 0, got {cfg.train_ratio}.")
    num_envs, fpb = int(cfg.env.num_envs), int(cfg.collector.frames_per_batch)
    if fpb % num_envs:
        raise ConfigError(
            f"collector.frames_per_batch ({fpb}) must be a multiple of env.num_envs ({num_envs}); "
            f"use e.g. collector.frames_per_batch={max(1, fpb // num_envs) * num_envs}."
        )
    needed = int(cfg.batch_length) * num_envs
    if int(cfg.collector.init_random_frames) < needed:
        raise ConfigError(
            f"collector.init_random_frames ({cfg.collector.init_random_frames}) must be >= "
            f"batch_length x env.num_envs = {cfg.batch_length} x {num_envs} = {needed}, so every env "
            f"holds one full sequence before training; set collector.init_random_frames={needed} "
            "or lower batch_length."
        )
    if fpb < needed:
        raise ConfigError(
            f"collector.frames_per_batch ({fpb}) must be >= batch_length x env.num_envs = {needed}, "
            f"so the first collection gives each env a full sequence; set "
            f"collector.frames_per_batch={needed} or lower batch_length."
        )
    if int(cfg.replay.capacity) < max(needed, fpb):
        raise ConfigError(
            f"replay.capacity ({cfg.replay.capacity}) must hold at least one collection "
            f"({max(needed, fpb)} frames); raise replay.capacity."
        )
    if int(cfg.replay.capacity) % num_envs:
        raise ConfigError(
            f"replay.capacity ({cfg.replay.capacity}) must be a multiple of env.num_envs ({num_envs}) "
            "(the storage is [num_envs, time])."
        )
    if cfg.loss.actor_grad not in ("dynamics", "reinforce"):
        raise ConfigError(
            f"loss.actor_grad must be 'dynamics' or 'reinforce', got {cfg.loss.actor_grad!r}."
        )
    if cfg.resume is not None and not os.path.isfile(str(cfg.resume)):
        raise ConfigError(
            f"resume={cfg.resume} does not exist. Point resume= at a checkpoint file "
            "(e.g. <logdir>/checkpoints/last.pt) or drop resume= to start fresh."
        )
    validate_scaling_config(cfg)


def validate_scaling_config(cfg: DictConfig) -> None:
    """The ``collector.backend``, ``eval:`` and ``distributed:`` settings (see README, Scaling out)."""
    if cfg.collector.backend not in ("local", "ray"):
        raise ConfigError(
            f"collector.backend must be 'local' or 'ray', got {cfg.collector.backend!r}."
        )
    if cfg.collector.backend == "ray":
        from dreamer.collector.ray_collector import validate_ray_config

        validate_ray_config(cfg)
    if cfg.eval.enabled:
        from dreamer.evaluation.settings import validate_eval_config

        validate_eval_config(cfg.eval)
    if cfg.distributed.backend not in ("auto", "nccl", "gloo"):
        raise ConfigError(
            f"distributed.backend must be auto, nccl or gloo, got {cfg.distributed.backend!r}."
        )
