"""Episode statistics from collector batches and a small TensorBoard logger."""

from __future__ import annotations

from pathlib import Path

import torch
from tensordict import TensorDictBase
from torch.utils.tensorboard import SummaryWriter

EPISODE_KEYS = (("next", "done"), ("next", "episode_reward"), ("next", "step_count"))
"""What :func:`finished_episode_stats` reads from a batch."""


def finished_episode_stats(batch: TensorDictBase) -> dict[str, float]:
    """Mean return and length of the episodes that ended in ``batch`` (empty if none did)."""
    done_key, return_key, length_key = EPISODE_KEYS
    done = batch.get(done_key).squeeze(-1)
    if not bool(done.any()):
        return {}
    returns = batch.get(return_key)[done]
    lengths = batch.get(length_key)[done]
    return {
        "episode/return": float(returns.float().mean()),
        "episode/length": float(lengths.float().mean()),
        "episode/count": float(done.sum()),
    }


class TensorBoardLogger:
    """Scalars to ``<logdir>/tensorboard``; steps are env frames."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        self.writer = SummaryWriter(str(Path(logdir) / "tensorboard"), purge_step=purge_step)

    def log(self, values: dict[str, float | torch.Tensor], step: int) -> None:
        """Write each value as a scalar at ``step``."""
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def log_figure(self, name: str, figure, step: int) -> None:
        """Write a matplotlib figure as an image and close it."""
        self.writer.add_figure(name, figure, step, close=True)

    def log_image(self, name: str, image, step: int) -> None:
        """Write a uint8 image ``[H, W, 3]`` (numpy or tensor)."""
        self.writer.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.flush()
        self.writer.close()
