"""Matplotlib figures of imagination: used by the notebooks and the TensorBoard image log."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

# Observation terms worth watching per task: name -> index in the ``policy`` vector.
KEY_TERMS = {
    "Isaac-Ant-v0": {
        "torso height": 0,
        "forward velocity": 1,
        "up projection": 10,
        "joint 0 position": 12,
    },
    "Isaac-Cartpole-v0": {
        "cart position": 0,
        "pole angle": 1,
        "cart velocity": 2,
        "pole angular velocity": 3,
    },
}


def open_loop_figure(prediction: dict[str, torch.Tensor], task: str, sample: int = 0):
    """Imagined vs real key observation terms, reward, and open-loop error against horizon.

    A model that does not see ``policy`` (pixels only) has no observation terms to plot: the
    figure then shows reward and the pixel error (see :func:`frame_strip_figure` for frames).
    """
    has_terms = "real_obs" in prediction
    terms = KEY_TERMS.get(task, {f"obs[{i}]": i for i in range(4)}) if has_terms else {}
    fig, axes = plt.subplots(1, len(terms) + 2, figsize=(4 * (len(terms) + 2), 3.2))
    steps = torch.arange(1, prediction["real_reward"].shape[1] + 1)
    for ax, (name, index) in zip(axes, terms.items(), strict=False):
        ax.plot(steps, prediction["real_obs"][sample, :, index].cpu(), label="real", color="k")
        ax.plot(
            steps,
            prediction["imagined_obs"][sample, :, index].cpu(),
            label="imagined",
            color="tab:orange",
        )
        ax.set_title(name)
        ax.set_xlabel("steps ahead")
    reward_ax, error_ax = axes[-2], axes[-1]
    reward_ax.plot(steps, prediction["real_reward"][sample, :, 0].cpu(), color="k", label="real")
    reward_ax.plot(
        steps,
        prediction["imagined_reward"][sample, :, 0].cpu(),
        color="tab:orange",
        label="predicted",
    )
    reward_ax.set_title("reward")
    axes[0].legend()
    error_ax.plot(steps, prediction["error"].cpu(), color="tab:red")
    space = "symlog obs" if has_terms else "pixels / 255"
    error_ax.set_title(f"open-loop RMSE ({space})")
    error_ax.set_xlabel("steps ahead")
    fig.tight_layout()
    return fig


def strip_steps(horizon: int, max_frames: int = 8) -> list[int]:
    """At most ``max_frames`` step indices spread evenly over ``[0, horizon)``, first and last kept."""
    if horizon < 1 or max_frames < 1:
        raise ValueError(f"need horizon >= 1 and max_frames >= 1, got {horizon}, {max_frames}")
    count = min(horizon, max_frames)
    return sorted({round(i * (horizon - 1) / max(count - 1, 1)) for i in range(count)})


def frame_strip(
    prediction: dict[str, torch.Tensor], sample: int = 0, max_frames: int = 8
) -> tuple[list[int], np.ndarray]:
    """Real and imagined frames of one trajectory: ``(steps, frames [2, n, h, w, 3] uint8)``.

    Row 0 is real, row 1 imagined (decoded from the open-loop model state); ``steps`` are the
    0-based indices into the imagined horizon (``steps[i] + 1`` steps ahead).
    """
    if "real_pixels" not in prediction:
        raise ValueError(
            "this prediction has no frames: the model does not read pixels "
            "(train with env.pixels=true model.obs_keys=[pixels] or [pixels,policy])."
        )
    steps = strip_steps(prediction["real_pixels"].shape[1], max_frames)
    rows = [prediction[key][sample, steps] for key in ("real_pixels", "imagined_pixels")]
    return steps, to_uint8_frames(torch.stack(rows))


def to_uint8_frames(images: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] ``[..., h, w, 3]`` as a uint8 numpy array for ``imshow``."""
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def frame_rows_figure(rows: dict[str, np.ndarray], steps: list[int], title: str = ""):
    """One row of frames ``[n, h, w, 3]`` per label, columns titled ``+step`` (steps ahead)."""
    fig, axes = plt.subplots(
        len(rows), len(steps), figsize=(1.6 * len(steps), 1.8 * len(rows)), squeeze=False
    )
    for row, (label, frames) in enumerate(rows.items()):
        for col, step in enumerate(steps):
            ax = axes[row, col]
            ax.imshow(frames[col], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(f"+{step + 1}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def frame_strip_figure(prediction: dict[str, torch.Tensor], sample: int = 0, max_frames: int = 8):
    """Strip of real (top) vs imagined (bottom) frames of one trajectory, by steps ahead."""
    steps, frames = frame_strip(prediction, sample, max_frames)
    rows = {"real": frames[0], "imagined": frames[1]}
    return frame_rows_figure(rows, steps, "real vs imagined frames (steps ahead)")
