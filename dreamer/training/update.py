"""One DreamerV3 update: world model, imagination, actor and critic from one replay sample."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase

from dreamer.agent import Agent


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the term and the update."""


def loss_terms(losses: TensorDictBase) -> dict[str, torch.Tensor]:
    """The entries whose sum is the training objective."""
    return {
        key: value
        for key, value in losses.items()
        if isinstance(key, str) and key.startswith("loss_")
    }


def update_step(
    agent: Agent,
    sequences: TensorDictBase,
    grad_hook: Callable[[Agent], None] | None = None,
) -> TensorDictBase:
    """Compute all DreamerV3 losses on ``[B, T]`` sequences, backprop once, step, EMA the critic.

    ``grad_hook(agent)`` runs between backward and the optimizer step (the data-parallel
    learner averages gradients there). Returns the detached loss and metric entries (no host
    sync happens here).
    """
    losses = agent.loss(sequences)
    terms = loss_terms(losses)
    total = sum(value.sum() for value in terms.values())
    agent.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_hook is not None:
        grad_hook(agent)
    agent.optimizer.step()
    agent.target_updater.step()
    metrics = losses.exclude("replay_context").detach()
    metrics.set("loss_total", total.detach())
    return metrics


def check_finite(metrics: TensorDictBase, update: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite loss term."""
    for key, value in loss_terms(metrics).items():
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteLossError(
                f"{key} is {value.flatten()[0].item()} at update {update}. The last good checkpoint is "
                "kept; lower the learning rates (optim.*_lr) or check the env's observations for NaN."
            )
