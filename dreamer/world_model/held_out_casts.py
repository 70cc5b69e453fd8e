"""The held-out world model's weights cast once per imagination rollout, not at every step.

TorchRL's actor loss holds the world model out of the imagination's graph: its parameters want no
gradient there. Under bf16 autocast every imagined step still cast each of the prior's weights and
biases to bf16 again (autocast caches only the casts of parameters that want a gradient): 13 casts
a step, about 195 small kernels on the update's forward chain at horizon 15 (H100 trace,
docs/benchmarks.md, "One reader per tensor in the filter"). Inside :func:`cast_once`,
:func:`compute_weight` makes one cast per parameter and dtype for the whole rollout. A parameter
that wants a gradient is cast at each use as before: a shared cast would be one autograd node read
by every step (:func:`dreamer.training.concurrent_loss.uncached_casts` says why that is avoided).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

_casts: ContextVar[dict | None] = ContextVar("held_out_casts", default=None)


@contextmanager
def cast_once() -> Iterator[None]:
    """Within this block, :func:`compute_weight` casts each held-out parameter once."""
    token = _casts.set({})
    try:
        yield
    finally:
        _casts.reset(token)


def compute_weight(param: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``param.to(dtype)``; for a parameter that wants no gradient, inside :func:`cast_once`, the
    same cast every time."""
    if param is None or param.dtype == dtype:
        return param
    cache = _casts.get()
    if cache is None or param.requires_grad:
        return param.to(dtype)
    key = (id(param), dtype)
    if key not in cache:
        # Kept with the parameter itself, so an id reused by another tensor cannot match.
        cache[key] = (param, param.to(dtype))
    return cache[key][1]


def run_linear(layer: nn.Linear, value: torch.Tensor) -> torch.Tensor:
    """``layer(value)``; under autocast, with its weight and bias from :func:`compute_weight`
    (autocast would cast them again; values are the same)."""
    device_type = value.device.type
    if not torch.is_autocast_enabled(device_type) or _casts.get() is None:
        return layer(value)
    dtype = torch.get_autocast_dtype(device_type)
    return F.linear(value, compute_weight(layer.weight, dtype), compute_weight(layer.bias, dtype))
