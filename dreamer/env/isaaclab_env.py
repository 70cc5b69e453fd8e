"""``env.backend=isaaclab``: real Isaac Lab tasks behind the same TorchRL interface as our MuJoCo env.

Two launch paths:

- Isaac Lab 3.x "kit-less" (pip ``isaaclab`` on Python 3.12, no Isaac Sim): Newton physics with the
  MuJoCo-Warp solver (``physics=newton_mjwarp``), on CUDA or on warp's CPU device. Assets come from
  ``ISAACSIM_ASSET_ROOT``; offline we point it at a locally built root
  (:mod:`dreamer.env.isaac_assets.build_asset_root`).
- Isaac Lab 2.x with Isaac Sim: ``AppLauncher`` must start the Kit app before Isaac's torch-heavy
  modules are imported.

Isaac Lab is imported only inside :func:`make_isaaclab_env`, so importing this module is cheap.
The env it returns is :class:`~dreamer.env.isaaclab_terminal_obs.IsaacLabDreamerWrapper`:
``policy`` ``(N, obs_dim)`` float32, ``action`` ``Bounded(-1, 1, (N, act_dim))``, ``reward`` and
``done``/``terminated``/``truncated`` ``(N, 1)``, ``final_obs_valid`` ``(N, 1)`` bool, and at done
steps ``("next", "policy")`` is the true terminal observation.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchrl.envs import EnvBase

log = logging.getLogger(__name__)

# Checked on Isaac Lab 3.0 kit-less, CPU: this pose looks at the Ant from behind and above.
# Quaternions are (x, y, z, w), Isaac Lab 3.x's convention; converted for 2.x (w first).
DEFAULT_CAMERA_POS = (-3.0, 0.0, 1.5)
DEFAULT_CAMERA_ROT_XYZW = (0.0, 0.23, 0.0, 0.9732)
# Tasks whose assets our offline asset root provides (drop-in robots from the newton wheel).
_OFFLINE_ASSET_TASK_PREFIXES = ("Isaac-Ant", "Isaac-Cartpole")
# Once any app/Isaac Lab module is up, Isaac Sim's Kit app must stay referenced for the process.
_APP_LAUNCHERS: list[Any] = []


def isaaclab_available() -> bool:
    """Whether Isaac Lab is importable here (checked without importing it)."""
    try:
        spec = importlib.util.find_spec("isaaclab")
    except (ImportError, ValueError):
        return False
    # A bare directory named "isaaclab" on sys.path is found as a namespace package with no
    # origin: that is not Isaac Lab.
    return spec is not None and spec.origin is not None


def installed_isaaclab_version() -> tuple[int, ...] | None:
    """The installed ``isaaclab`` distribution's version, without importing it (``None`` if unknown)."""
    try:
        return _parse_version(importlib.metadata.version("isaaclab"))
    except importlib.metadata.PackageNotFoundError:
        pass
    if not isaaclab_available():
        return None
    # Source checkouts (Isaac Lab container) may lack dist metadata: isaaclab_newton is 3.x only.
    return (3,) if importlib.util.find_spec("isaaclab_newton") is not None else (2,)


def _parse_version(version: Any) -> tuple[int, ...]:
    if isinstance(version, int):
        return (version,)
    if isinstance(version, tuple | list):
        return tuple(int(v) for v in version)
    numbers = re.findall(r"\d+", str(version))
    if not numbers:
        raise ValueError(f"Cannot parse an Isaac Lab version from {version!r}")
    return tuple(int(n) for n in numbers[:3])


def resolve_isaaclab_task_id(task: str, isaaclab_version: Any) -> str:
    """Map the task name users type (``Isaac-Ant-v0``) to the id the installed Isaac Lab registers.

    Isaac Lab 3.0 dropped the ``-v0`` suffix of the classic tasks (``Isaac-Ant``,
    ``Isaac-Cartpole``, ``Isaac-Humanoid`` and their ``-Direct`` variants); 2.x only knows the
    ``-v0`` ids. ``isaaclab_version``: ``"3.0.0"``, ``(3, 0)``, ``3``; ``None`` = installed one.
    """
    if isaaclab_version is None:
        isaaclab_version = installed_isaaclab_version() or (2,)
    major = _parse_version(isaaclab_version)[0]
    versioned = re.fullmatch(r"(.+)-v\d+", task)
    if major >= 3:
        return versioned.group(1) if versioned and task.endswith("-v0") else task
    return task if versioned else f"{task}-v0"


def _torch_device_str(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    return str(device)


def _configure_asset_root(task_id: str, asset_root: str | os.PathLike | None) -> None:
    """Point Isaac Lab 3.x at a local asset root before ``isaaclab`` is imported.

    Order: ``asset_root`` argument, ``DREAMER_ISAAC_ASSET_ROOT`` (``cloud`` keeps Isaac's default),
    an ``ISAACSIM_ASSET_ROOT`` the user already set, and for Ant and Cartpole without Isaac Sim
    our packaged root, built on first use into the cache (Isaac's default is a cloud bucket).
    """
    from dreamer.env.isaac_assets.build_asset_root import ASSET_ROOT_ENV_VAR, ensure_asset_root

    configured = asset_root if asset_root is not None else os.environ.get(ASSET_ROOT_ENV_VAR)
    if configured is not None and str(configured).lower() in ("", "cloud", "default", "none"):
        return
    if configured is None:
        if os.environ.get("ISAACSIM_ASSET_ROOT"):
            return
        if not task_id.startswith(_OFFLINE_ASSET_TASK_PREFIXES):
            log.warning(
                "No offline assets for %s: Isaac Lab will fetch them from its asset server.",
                task_id,
            )
            return
        if importlib.util.find_spec("isaacsim") is not None:
            return  # Isaac Sim installs come with their own asset configuration.
    root = ensure_asset_root(configured)
    if "isaaclab.utils.assets" in sys.modules and os.environ.get("ISAACSIM_ASSET_ROOT") != str(
        root
    ):
        log.warning(
            "Isaac Lab was imported before the asset root was set; %s may be ignored.", root
        )
    os.environ["ISAACSIM_ASSET_ROOT"] = str(root)
    log.info("ISAACSIM_ASSET_ROOT=%s", root)


def _start_app_2x(device: str, headless: bool, cameras: bool) -> None:
    """Isaac Lab 2.x: start Isaac Sim's Kit app before Isaac Lab's torch-heavy imports."""
    if _APP_LAUNCHERS:
        return
    from isaaclab.app import AppLauncher

    _APP_LAUNCHERS.append(AppLauncher(headless=headless, enable_cameras=cameras, device=device))


CAMERA_KEYS = ("width", "height", "pos", "rot", "renderer_backend")


def _camera_kwargs(pixels: dict, major: int) -> dict[str, Any]:
    unknown = sorted(set(pixels) - set(CAMERA_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown camera settings {unknown} in env.camera; allowed: {', '.join(CAMERA_KEYS)}."
        )
    pos = tuple(float(v) for v in pixels.get("pos", DEFAULT_CAMERA_POS))
    x, y, z, w = (float(v) for v in pixels.get("rot", DEFAULT_CAMERA_ROT_XYZW))
    # Our config always speaks (x, y, z, w); Isaac Lab 2.x offsets are (w, x, y, z).
    rot = (x, y, z, w) if major >= 3 else (w, x, y, z)
    backend = pixels.get("renderer_backend", "newton_warp" if major >= 3 else None)
    return {
        "width": int(pixels.get("width", 64)),
        "height": int(pixels.get("height", 64)),
        "pos": pos,
        "rot": rot,
        "renderer_backend": backend,
    }


def make_isaaclab_env(
    task: str,
    num_envs: int,
    device: str,
    seed: int,
    *,
    headless: bool = True,
    pixels: dict | None = None,
    episode_length_s: float | None = None,
    physics: str | None = "newton_mjwarp",
    overrides: Sequence[str] = (),
    cfg_hook: Callable[[Any], None] | None = None,
    asset_root: str | os.PathLike | None = None,
) -> EnvBase:
    """Build ``task`` in Isaac Lab (``num_envs`` sub-envs on ``device``) as a TorchRL env.

    Args:
        task: task name as users type it (``Isaac-Ant-v0``); mapped per Isaac Lab version.
        num_envs: number of parallel sub-envs (the env's batch size).
        device: simulation and output device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        seed: written to the task config (Isaac Lab seeds its RNGs from it).
        headless: Isaac Lab 2.x only: start Isaac Sim without a window.
        pixels: add a tiled camera, e.g. ``{"width": 64, "height": 64, "pos": [...],
            "rot": [x, y, z, w], "renderer_backend": "newton_warp"}``; emits ``pixels`` uint8
            ``(N, H, W, 3)``.
        episode_length_s: override the task's episode length (tests use short episodes).
        physics: 3.x physics preset (``overrides=["physics=..."]``); ``None`` keeps the task's.
        overrides: extra Hydra-style 3.x config overrides.
        cfg_hook: called with the env config just before ``gym.make``.
        asset_root: 3.x local asset root (see :func:`_configure_asset_root`).
    """
    if not isaaclab_available():
        raise ImportError(
            "env.backend=isaaclab needs Isaac Lab: run scripts/setup_isaaclab_env.sh (Isaac Lab 3.x, "
            "Python 3.12) or use the Isaac Lab container; see docs/isaaclab.md."
        )
    version = installed_isaaclab_version() or (2,)
    major = version[0]
    task_id = resolve_isaaclab_task_id(task, version)
    sim_device = _torch_device_str(device)
    camera = None if pixels is None else _camera_kwargs(pixels, major)
    # tensordict's get() returning None for missing keys is what TorchRL expects; Isaac Lab 2.x
    # containers may ship an older tensordict whose default differs.
    os.environ.setdefault("TD_GET_DEFAULTS_TO_NONE", "1")
    import tensordict

    if hasattr(tensordict, "set_get_defaults_to_none"):
        tensordict.set_get_defaults_to_none(True)

    if major >= 3:
        _configure_asset_root(task_id, asset_root)
    else:
        _start_app_2x(sim_device, headless, cameras=pixels is not None)

    import gymnasium as gym
    import isaaclab_tasks  # noqa: F401  (registers the tasks with gymnasium)
    from isaaclab_tasks.utils import parse_env_cfg
    from torchrl.envs.libs.isaac_lab import IsaacLabWrapper

    from dreamer.env.isaaclab_terminal_obs import wrap_isaaclab_env

    if major >= 3 and task_id not in gym.registry and task in gym.registry:
        task_id = task  # a 3.x task that kept its version suffix
    if major >= 3:
        all_overrides = [*([f"physics={physics}"] if physics else []), *overrides]
        cfg = parse_env_cfg(task_id, device=sim_device, num_envs=num_envs, overrides=all_overrides)
    else:
        cfg = parse_env_cfg(task_id, device=sim_device, num_envs=num_envs)
    cfg.seed = seed
    if hasattr(cfg, "compute_final_obs"):
        cfg.compute_final_obs = True
    if episode_length_s is not None:
        cfg.episode_length_s = float(episode_length_s)
    if camera is not None:
        IsaacLabWrapper.add_tiled_camera_config(cfg, **camera)
    if cfg_hook is not None:
        cfg_hook(cfg)
    env = gym.make(task_id, cfg=cfg)
    log.info(
        "Isaac Lab %s: %s, %d envs on %s",
        ".".join(map(str, version)),
        task_id,
        num_envs,
        sim_device,
    )
    return wrap_isaaclab_env(env, device=sim_device, from_tiled_camera=pixels is not None)
