"""TorchRL's DreamerV3 optimizer step with its counters on the device, so a CUDA graph can replay it.

Why not ``DreamerV3Optimizer.step`` itself: it keeps each group's step count as a Python int and
turns it into the warm-up learning rate and the bias corrections on the host. Captured in a CUDA
graph, those numbers would be frozen at their capture-time values. :func:`optimizer_step` does the
same arithmetic (adaptive gradient clipping, bias-corrected RMS scaling, bias-corrected momentum,
linear warm-up) with the step count held in a device tensor that the graph itself increments. The
optimizer object, its param groups and its state stay TorchRL's, so checkpoints are unchanged;
``tests/test_graphed_update.py`` pins that both steps give the same parameters.
"""

from __future__ import annotations

import torch
from torchrl.trainers.algorithms import DreamerV3Optimizer


def init_optimizer_state(optimizer: DreamerV3Optimizer) -> None:
    """Create the ``rms``/``momentum`` buffers TorchRL would create lazily on its first step."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state[parameter]
            if not state:
                state["rms"] = torch.zeros_like(parameter, dtype=torch.float32)
                state["momentum"] = torch.zeros_like(parameter, dtype=torch.float32)


def device_step_counters(optimizer: DreamerV3Optimizer) -> torch.Tensor:
    """The param groups' current step counts, ``[groups]`` float32 on the parameters' device
    (one kernel advances them all in :class:`~dreamer.training.flat_optimizer.FlatOptimizerStep`)."""
    counts = [float(group["step"]) for group in optimizer.param_groups]
    return torch.tensor(counts, device=optimizer.param_groups[0]["params"][0].device)


@torch.no_grad()
def optimizer_step(optimizer: DreamerV3Optimizer, steps: torch.Tensor) -> None:
    """One DreamerV3 update of every parameter that has a gradient; advances ``steps`` (from
    :func:`device_step_counters`) in place.

    Call :func:`init_optimizer_state` once before the first call. The host-side ``group["step"]``
    is not touched here (a captured graph cannot); the caller advances it alongside.
    """
    for group, step in zip(optimizer.param_groups, steps, strict=True):
        step.add_(1.0)
        parameters = [p for p in group["params"] if p.grad is not None]
        if not parameters:
            continue
        warmup_steps = group["warmup_steps"]
        if warmup_steps:
            warmup = ((step - 1.0) / warmup_steps).clamp(max=1.0)
        else:
            warmup = torch.ones_like(step)
        learning_rate = group["lr"] * warmup
        gradients = [p.grad.float() for p in parameters]
        if group["agc"]:
            gradient_norms = torch._foreach_norm(gradients)
            parameter_norms = torch._foreach_norm([p.detach().float() for p in parameters])
            torch._foreach_clamp_min_(parameter_norms, group["parameter_norm_min"])
            maximum_norms = torch._foreach_mul(parameter_norms, group["agc"])
            scales = torch._foreach_div(
                maximum_norms, torch._foreach_maximum(gradient_norms, maximum_norms)
            )
            gradients = torch._foreach_mul(gradients, scales)
        rms = [optimizer.state[p]["rms"] for p in parameters]
        momentum = [optimizer.state[p]["momentum"] for p in parameters]
        beta1, beta2 = group["beta1"], group["beta2"]
        torch._foreach_mul_(rms, beta2)
        torch._foreach_addcmul_(rms, gradients, gradients, value=1 - beta2)
        denominator = torch._foreach_div(rms, 1 - torch.pow(beta2, step))
        torch._foreach_sqrt_(denominator)
        torch._foreach_add_(denominator, group["eps"])
        normalized = torch._foreach_div(gradients, denominator)
        torch._foreach_mul_(momentum, beta1)
        torch._foreach_add_(momentum, normalized, alpha=1 - beta1)
        scale = -learning_rate / (1 - torch.pow(beta1, step))
        updates = torch._foreach_mul(momentum, scale)
        if parameters[0].dtype != torch.float32:
            updates = [u.to(p.dtype) for u, p in zip(updates, parameters, strict=True)]
        torch._foreach_add_(parameters, updates)


def advance_host_steps(optimizer: DreamerV3Optimizer) -> None:
    """Keep the checkpointed Python step counts in line with the device counters."""
    for group in optimizer.param_groups:
        group["step"] += 1
