"""Eval episode video: the worker's frame recorder and the learner's GIF and frame-strip writers.

The learner writes a GIF with Pillow (installed with matplotlib) and a strip of a few frames
as a TensorBoard image, not ``SummaryWriter.add_video``: that one needs ``moviepy``, which the
project does not depend on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamer.imagination.plots import strip_steps

# GIF frame delays are stored in 1/100 s and viewers slow down delays under 20 ms; 50 ms plays
# the episode at 20 frames per second.
GIF_FRAME_MS = 50


class FrameRecorder:
    """Keeps env 0's camera frames of one episode, at most ``max_frames`` (uint8 ``[H, W, 3]``).

    Frames are copied to the CPU one at a time so the queue message stays ``max_frames`` frames
    of one env, whatever the number of eval envs.
    """

    def __init__(self, max_frames: int, key: str = "pixels"):
        self.max_frames = int(max_frames)
        self.key = key
        self.frames: list[np.ndarray] = []
        self.ended = False

    def add(self, pixels: torch.Tensor, done: bool) -> None:
        """Add env 0's frame of ``pixels`` ``[N, H, W, 3]``; after ``done`` nothing more is kept."""
        if self.ended or len(self.frames) >= self.max_frames:
            return
        self.frames.append(pixels[0].to("cpu", torch.uint8).numpy().copy())
        self.ended = done

    def video(self) -> np.ndarray | None:
        """The frames as one uint8 array ``[T, H, W, 3]``, or ``None`` if none were added."""
        return np.stack(self.frames) if self.frames else None


def write_gif(frames: np.ndarray, path: str | Path) -> Path:
    """Write uint8 frames ``[T, H, W, 3]`` as a looping animated GIF at ``path``."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"need uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    return path


def frame_strip(frames: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """Up to ``max_frames`` evenly spaced frames (first and last kept) side by side, ``[H, n*W, 3]``."""
    return np.concatenate(list(frames[strip_steps(len(frames), max_frames)]), axis=1)
