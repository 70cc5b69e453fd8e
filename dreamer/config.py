"""The project's Hydra config, composed in code exactly as ``train_dreamer.py`` composes it."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(*overrides: str) -> DictConfig:
    """``configs/config.yaml`` with command-line style ``overrides`` (``"task=..."``, ...)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))
