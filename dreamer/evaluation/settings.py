"""The ``eval:`` config section: validation and the worker's process environment."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

# The variables the evaluator sets for its worker (reported back by the worker when it starts).
WORKER_ENV_KEYS = (
    "CUDA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
    "VK_ICD_FILENAMES",
    "__GLX_VENDOR_LIBRARY_NAME",
    "XDG_RUNTIME_DIR",
)


def validate_eval_config(eval_cfg: DictConfig) -> None:
    """Reject an ``eval:`` section that cannot work, naming the setting to change."""
    from dreamer.training.config_check import ConfigError

    for name in ("every_updates", "episodes", "max_steps"):
        if int(eval_cfg[name]) <= 0:
            raise ConfigError(f"eval.{name} must be a positive integer, got {eval_cfg[name]}.")
    if int(eval_cfg.video_max_frames) < 0:
        raise ConfigError(
            f"eval.video_max_frames must be >= 0 (0: no video), got {eval_cfg.video_max_frames}."
        )
    device = str(eval_cfg.worker_device)
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"eval.worker_device must be cpu, cuda or cuda:<i>, got {device!r}.")
    visible = eval_cfg.cuda_visible_devices
    if device.startswith("cuda") and visible is not None and str(visible).strip() in ("", "-1"):
        raise ConfigError(
            f"eval.worker_device={device} but eval.cuda_visible_devices={visible!r} hides every GPU; "
            "set eval.cuda_visible_devices=<gpu index> or eval.worker_device=cpu."
        )
    if eval_cfg.nvidia_lib_dir is not None and not Path(eval_cfg.nvidia_lib_dir).is_dir():
        raise ConfigError(
            f"eval.nvidia_lib_dir={eval_cfg.nvidia_lib_dir} is not a directory; point it at the "
            "folder holding libGLX_nvidia/libEGL_nvidia (e.g. /usr/lib/x86_64-linux-gnu) or set null."
        )
    if eval_cfg.vulkan_icd is not None and not Path(eval_cfg.vulkan_icd).is_file():
        raise ConfigError(
            f"eval.vulkan_icd={eval_cfg.vulkan_icd} does not exist; point it at the NVIDIA ICD json "
            "(e.g. /usr/share/vulkan/icd.d/nvidia_icd.json) or set null."
        )


def worker_environment(eval_cfg: DictConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Variables to start the eval worker with (only those the config sets).

    ``LD_LIBRARY_PATH`` gets ``nvidia_lib_dir`` prepended to ``base``'s value (default: this
    process's). ``__GLX_VENDOR_LIBRARY_NAME=nvidia`` is set whenever the worker is pointed at
    the NVIDIA stack (a CUDA device, an NVIDIA library dir or a Vulkan ICD), so GLVND does not
    pick Mesa. The XDG runtime dir is created with mode 0o700.
    """
    from dreamer.evaluation.launch import make_private_dir

    base = dict(os.environ) if base is None else base
    env: dict[str, str] = {}
    if eval_cfg.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(eval_cfg.cuda_visible_devices)
    if eval_cfg.nvidia_lib_dir is not None:
        previous = base.get("LD_LIBRARY_PATH")
        lib = str(eval_cfg.nvidia_lib_dir)
        env["LD_LIBRARY_PATH"] = f"{lib}:{previous}" if previous else lib
    if eval_cfg.vulkan_icd is not None:
        env["VK_ICD_FILENAMES"] = str(eval_cfg.vulkan_icd)
    nvidia = (
        str(eval_cfg.worker_device).startswith("cuda")
        or eval_cfg.nvidia_lib_dir is not None
        or eval_cfg.vulkan_icd is not None
    )
    if nvidia:
        env["__GLX_VENDOR_LIBRARY_NAME"] = "nvidia"
    if eval_cfg.xdg_runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(make_private_dir(eval_cfg.xdg_runtime_dir))
    return env
