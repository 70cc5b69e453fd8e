"""Build the training env: pick the backend, then add the transforms the agent relies on."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from torchrl.envs import EnvBase, RewardSum, StepCounter, TransformedEnv

from dreamer.env.isaaclab_env import isaaclab_available

log = logging.getLogger(__name__)

BACKENDS = ("auto", "mujoco", "isaaclab")


def known_tasks() -> list[str]:
    """Task names the embedded backend knows (the Isaac Lab backend takes the same names)."""
    from dreamer.env.mujoco_env import EMBEDDED_TASKS

    return sorted(EMBEDDED_TASKS)


def check_task(task: str) -> None:
    """Reject an unknown task before anything expensive starts."""
    tasks = known_tasks()
    if task not in tasks:
        raise ValueError(
            f"Unknown task {task!r}. Known tasks: {', '.join(tasks)}. Set task=<one of them>."
        )


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``isaaclab`` when Isaac Lab is importable, else ``mujoco``; says which."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown env.backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        backend = "isaaclab" if isaaclab_available() else "mujoco"
        log.info("env.backend=auto chose %s", backend)
    return backend


def camera_config(env_cfg) -> dict | None:
    """``env.camera`` as a plain dict when ``env.pixels`` is on, else ``None`` (no camera)."""
    if not env_cfg.get("pixels", False):
        return None
    camera = env_cfg.get("camera") or {}
    if isinstance(camera, DictConfig):
        camera = OmegaConf.to_container(camera, resolve=True)
    return dict(camera)


def make_base_env(
    task: str,
    num_envs: int,
    device: str,
    seed: int,
    backend: str = "auto",
    pixels: dict | None = None,
    physics_threads: int | None = None,
) -> EnvBase:
    """The raw batched env (no Dreamer transforms) for ``task`` on the chosen backend.

    ``pixels`` (camera settings, see :func:`camera_config`) adds the ``pixels`` observation;
    ``physics_threads`` sizes the embedded MuJoCo env's thread pool (``None``: its default).
    """
    check_task(task)
    backend = resolve_backend(backend)
    if backend == "isaaclab":
        from dreamer.env.isaaclab_env import make_isaaclab_env

        return make_isaaclab_env(task, num_envs=num_envs, device=device, seed=seed, pixels=pixels)
    from dreamer.env.mujoco_env import MujocoBatchedEnv

    return MujocoBatchedEnv(
        task,
        num_envs=num_envs,
        device=device,
        seed=seed,
        pixels=pixels,
        num_threads=physics_threads,
    )


def add_episode_stats(env: EnvBase) -> TransformedEnv:
    """Episode return and length, reset per env on partial resets (for logging)."""
    if not isinstance(env, TransformedEnv):
        env = TransformedEnv(env)
    env.append_transform(RewardSum())
    env.append_transform(StepCounter())
    return env
