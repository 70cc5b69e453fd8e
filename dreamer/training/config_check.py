"""Validate the config before anything expensive starts; every error says what to change."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig, OmegaConf

# torch's CUDA BLAS choices on NVIDIA GPUs (``torch.backends.cuda.preferred_blas_library``).
BLAS_LIBRARIES = ("cublas", "cublaslt")


class ConfigError(ValueError):
    """A config value that cannot work, with the fix in the message."""


def resolve_device(cfg: DictConfig) -> None:
    """``device=auto`` means the current CUDA device when there is one, else the CPU."""
    if str(cfg.device) == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"


def resolve_compile(cfg: DictConfig) -> None:
    """``compile.enabled=auto`` means on for CUDA learners, off on CPU."""
    if str(cfg.compile.enabled) == "auto":
        cfg.compile.enabled = torch.device(cfg.device).type == "cuda"


DEVICE_SETTINGS = (
    "device",
    "env.device",
    "replay.device",
    "collector.storing_device",
    "pipeline.acting_device",
)


def fit_devices_to_visible_gpus(cfg: DictConfig) -> list[str]:
    """Move settings that name an invisible GPU (``cuda:1`` on a one-GPU machine) to ``cuda:0``.

    The two-GPU layout (``env.device=cuda:0 device=cuda:1 pipeline.mode=async``) then falls back
    to sharing one GPU instead of failing. Returns the settings it changed (the caller logs them).
    """
    visible = torch.cuda.device_count()
    changed = []
    for name in DEVICE_SETTINGS:
        value = OmegaConf.select(cfg, name)
        if value is None:
            continue
        device = torch.device(str(value))
        if device.type == "cuda" and device.index is not None and device.index >= max(visible, 1):
            OmegaConf.update(cfg, name, "cuda:0")
            changed.append(f"{name}={value} -> cuda:0 ({visible} GPU visible)")
    return changed


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
    if cfg.get("time_limit_s") is not None and float(cfg.time_limit_s) <= 0:
        raise ConfigError(
            f"time_limit_s must be a positive number of seconds or null, got {cfg.time_limit_s}."
        )
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
    if str(cfg.learner.blas) not in BLAS_LIBRARIES:
        raise ConfigError(
            f"learner.blas must be one of {', '.join(BLAS_LIBRARIES)}, got {cfg.learner.blas!r}."
        )
    if str(cfg.pipeline.mode) not in ("sync", "async", "process"):
        raise ConfigError(
            f"pipeline.mode must be sync, async or process, got {cfg.pipeline.mode!r}."
        )
    if str(cfg.pipeline.mode) == "process" and cfg.collector.backend != "local":
        raise ConfigError(
            "pipeline.mode=process runs the local collector in a worker process; with "
            f"collector.backend={cfg.collector.backend} use pipeline.mode=sync."
        )
    if int(cfg.pipeline.weight_sync_every) < 1 or int(cfg.pipeline.max_batches_ahead) < 1:
        raise ConfigError("pipeline.weight_sync_every and pipeline.max_batches_ahead must be >= 1.")
    mode = str(cfg.learner.mode)
    if mode not in ("auto", "graph", "eager"):
        raise ConfigError(f"learner.mode must be auto, graph or eager, got {mode!r}.")
    if mode == "graph" and torch.device(cfg.device).type != "cuda":
        raise ConfigError(
            f"learner.mode=graph replays the update as a CUDA graph and needs device=cuda (got "
            f"device={cfg.device}); use learner.mode=auto or eager on this device."
        )
    check_pixel_config(cfg)
    validate_scaling_config(cfg)
    if cfg.resume is not None and not os.path.isfile(str(cfg.resume)):
        raise ConfigError(
            f"resume={cfg.resume} does not exist. Point resume= at a checkpoint file "
            "(e.g. <logdir>/checkpoints/last.pt) or drop resume= to start fresh."
        )


def check_pixel_config(cfg: DictConfig) -> None:
    """``model.obs_keys`` vs ``env.pixels``, image size vs the CNN, and the frames' replay memory.

    The replay storage is allocated whole on its first write, so a capacity whose frames cannot
    fit is rejected here instead of failing after the first collection.
    """
    from dreamer.world_model.networks import check_image_shape, model_size_from_config
    from dreamer.world_model.observations import PIXELS_KEY, obs_keys_from_config

    try:
        obs_keys = obs_keys_from_config(cfg.model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if PIXELS_KEY not in obs_keys:
        return
    if not cfg.env.get("pixels", False):
        raise ConfigError(
            f"model.obs_keys={list(obs_keys)} reads camera frames: set env.pixels=true "
            "or drop pixels from model.obs_keys."
        )
    height, width = int(cfg.env.camera.height), int(cfg.env.camera.width)
    try:
        check_image_shape((height, width, 3), model_size_from_config(cfg.model))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    # Each stored step keeps the frame and the next frame (TorchRL's root/"next" layout).
    needed = int(cfg.replay.capacity) * 2 * height * width * 3
    available = _free_memory(torch.device(cfg.replay.device))
    if available is not None and needed > 0.8 * available:
        fits = int(0.8 * available // (2 * height * width * 3)) // int(cfg.env.num_envs)
        raise ConfigError(
            f"replay.capacity={cfg.replay.capacity} needs {needed / 2**30:.1f} GiB for "
            f"{height}x{width} frames on {cfg.replay.device}, which has "
            f"{available / 2**30:.1f} GiB free; set replay.capacity={fits * int(cfg.env.num_envs)} "
            "or smaller, or lower env.camera.height/width."
        )


def _free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (``MemAvailable`` for host memory); ``None`` if unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


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
