"""One DreamerV3 update: world model, imagination, actor and critic from one replay sample."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase

from dreamer.agent import Agent
from dreamer.training.concurrent_loss import dreamer_losses, loss_sum

GRAD_NORM_KEY = "grad_norm"


class NonFiniteLossError(FloatingPointError):
    """A loss term (or the gradient) became NaN or inf; the message names the term and the update."""


def loss_terms(losses: TensorDictBase) -> dict[str, torch.Tensor]:
    """The entries whose sum is the training objective."""
    return {
        key: value
        for key, value in losses.items()
        if isinstance(key, str) and key.startswith("loss_")
    }


def gradient_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The global 2-norm of every gradient the optimizer's parameters hold."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.get_total_norm([g for g in grads if g is not None])


def update_step(
    agent: Agent,
    sequences: TensorDictBase,
    *,
    step_optimizer: Callable[[], torch.Tensor] | None = None,
    mixed_precision: bool = False,
    grad_hook: Callable[[Agent], None] | None = None,
    side_stream: torch.cuda.Stream | None = None,
) -> TensorDictBase:
    """Compute all DreamerV3 losses on ``[B, T]`` sequences, backprop, step, EMA the critic.

    ``step_optimizer`` replaces ``agent.optimizer.step`` and returns the gradients' global norm
    (the CUDA-graph learner passes its device-counter step, :func:`gradient_norm` before it or
    the flat step, which sums the squares on its way); ``mixed_precision`` runs the losses under
    bf16 autocast on CUDA; ``grad_hook(agent)`` runs between backward and the optimizer step
    (the data-parallel learner averages gradients there); ``side_stream`` runs the actor and
    critic losses beside the world model's (:mod:`dreamer.training.concurrent_loss`). Returns
    the detached loss and metric entries (no host sync happens here).
    """
    device_type = sequences.get("action").device.type
    agent.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=mixed_precision):
        # The backward pass runs inside, in pieces placed where they wait least.
        losses = dreamer_losses(agent.loss, sequences, side_stream, backward=True)
        total = loss_sum(losses)
    if grad_hook is not None:
        grad_hook(agent)
    # The loss terms can all be finite while a gradient is not; the guard watches this norm too.
    if step_optimizer is None:
        grad_norm = gradient_norm(agent.optimizer)
        agent.optimizer.step()
    else:
        grad_norm = step_optimizer()
    agent.target_updater.step()
    metrics = losses.exclude("replay_context").detach()
    metrics.set("loss_total", total.detach())
    metrics.set(GRAD_NORM_KEY, grad_norm.detach())
    return metrics


def guarded_values(metrics: TensorDictBase) -> dict[str, torch.Tensor]:
    """What must stay finite: every loss term, then the gradient norm when the step reports one."""
    values = loss_terms(metrics)
    if GRAD_NORM_KEY in metrics.keys():
        values[GRAD_NORM_KEY] = metrics.get(GRAD_NORM_KEY)
    return values


def non_finite_error(term: str, value: float, update: int) -> NonFiniteLossError:
    """The error a run stops with when ``term`` is first ``value`` (NaN/inf) at ``update``."""
    return NonFiniteLossError(
        f"{term} is {value} at update {update}. The last good checkpoint is kept; lower the "
        "learning rates (optim.*_lr) or check the env's observations for NaN."
    )


def check_finite(metrics: TensorDictBase, update: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite term (syncs with the device).

    The training loop uses :class:`~dreamer.training.guard.NonFiniteGuard`, which checks every
    update without a sync; this is the one-shot check for a single metrics dict.
    """
    for key, value in guarded_values(metrics).items():
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            raise non_finite_error(key, value[~finite].flatten()[0].item(), update)
