"""Train DreamerV3: ``python train_dreamer.py task=Isaac-Ant-v0 [profile=smoke] [key=value ...]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dreamer.training.loop import train


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; the run's files go under ``cfg.logdir``."""
    train(cfg)


if __name__ == "__main__":
    main()
