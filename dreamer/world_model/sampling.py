"""Straight-through categorical samples by Gumbel-max, without TorchRL's per-step cumsum.

TorchRL draws a class by inverse CDF (a ``cumsum`` over the classes, a scan kernel on a GPU, at
every step of every sequence). Gumbel-max draws from exactly the same distribution with one
element-wise op and an ``argmax``, and its noise does not depend on the logits, so a whole
sequence's noise is drawn in one call before the loop. It is used here in its exponential-race
form: with ``E_k ~ Exp(1)``, ``argmax_k p_k / E_k`` is ``argmax_k log p_k + G_k`` for the Gumbel
variable ``G_k = -log E_k``, and picks class ``k`` with probability ``p_k``.

The probabilities (softmax, uniform mix) and the straight-through output
``probs + (one_hot - probs).detach()`` are computed exactly as TorchRL computes them, so values
and gradients match TorchRL's for the same one-hot draw (``tests/test_sampling.py``).
"""

from __future__ import annotations

import torch

from dreamer.world_model import fused_ops, fused_sample


def race_noise(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``Exp(1)`` draws of ``shape`` (float32, on ``like``'s device): the noise of one sample per
    entry of ``shape[:-1]`` over ``shape[-1]`` classes."""
    return torch.empty(shape, device=like.device).exponential_()


def straight_through_sample(
    logits: torch.Tensor, unimix: float, noise: torch.Tensor
) -> torch.Tensor:
    """One-hot sample of ``Cat(unimix-mixed softmax(logits))`` with the straight-through gradient.

    Args:
        logits: ``[..., num_categoricals, num_classes]``.
        unimix: weight of the uniform mixture (as TorchRL's ``unimix``).
        noise: :func:`race_noise` of the same shape as ``logits``.

    Returns:
        ``[..., num_categoricals, num_classes]``: one-hot forward, softmax gradient backward.
        On CUDA this is one Triton kernel each way (:mod:`~dreamer.world_model.fused_sample`),
        whose forward is the exact one-hot rather than its rounding below.
    """
    if fused_ops.use_fused(logits, noise):
        return fused_sample.fused_straight_through_sample(logits, unimix, noise)
    probs = torch.softmax(logits, dim=-1)
    if unimix:
        probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    index = (probs.detach() / noise).argmax(-1, keepdim=True)
    one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return probs + (one_hot - probs).detach()


def sample_carried(
    logits: torch.Tensor,
    unimix: float,
    noise: torch.Tensor,
    keep: torch.Tensor,
    start: torch.Tensor,
    copy_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flattened :func:`straight_through_sample` ``[M, C * K]`` of ``[M, C, K]`` logits, the
    filter's next input ``start + sample * keep`` (``keep`` ``[M, 1]``: 0 where the next step
    starts a segment from ``start``, 1 where it carries the sample on), and the logits again,
    each tensor for one reader: ``(state, carried, logits)``. On CUDA one kernel each way, which
    writes the carried state in ``copy_dtype`` (the next step's matmul reads it) and sums the
    three outputs' gradients (:func:`~dreamer.world_model.fused_sample.fused_sample_carried`);
    elsewhere the torch ops, the logits being the input itself."""
    if fused_ops.use_fused(logits, noise):
        return fused_sample.fused_sample_carried(logits, unimix, noise, keep, start, copy_dtype)
    state = straight_through_sample(logits, unimix, noise).flatten(-2)
    return state, torch.addcmul(start, state, keep), logits
