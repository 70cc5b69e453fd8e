"""Matplotlib figures of imagination: used by the notebooks and the TensorBoard image log."""

from __future__ import annotations

import matplotlib.pyplot as plt
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
    """Imagined vs real key observation terms, reward, and open-loop error against horizon."""
    terms = KEY_TERMS.get(task, {f"obs[{i}]": i for i in range(4)})
    fig, axes = plt.subplots(1, len(terms) + 2, figsize=(4 * (len(terms) + 2), 3.2))
    steps = torch.arange(1, prediction["real_obs"].shape[1] + 1)
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
    axes[0].legend()
    reward_ax, error_ax = axes[-2], axes[-1]
    reward_ax.plot(steps, prediction["real_reward"][sample, :, 0].cpu(), color="k", label="real")
    reward_ax.plot(
        steps,
        prediction["imagined_reward"][sample, :, 0].cpu(),
        color="tab:orange",
        label="predicted",
    )
    reward_ax.set_title("reward")
    error_ax.plot(steps, prediction["error"].cpu(), color="tab:red")
    error_ax.set_title("open-loop RMSE (symlog obs)")
    error_ax.set_xlabel("steps ahead")
    fig.tight_layout()
    return fig
