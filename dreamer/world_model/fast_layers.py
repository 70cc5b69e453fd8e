"""A ``Linear -> RMSNorm -> SiLU`` stack run the fast way inside a loop.

TorchRL's DreamerV3 MLPs and the RSSM's sub-networks are such stacks. :func:`run_layers` runs one
with its ``Linear`` weight gradients left to a :class:`~dreamer.world_model.deferred_grads.DeferredLayers`
(when the loop has one and it handles that weight) and each norm + SiLU pair as one Triton kernel
(:mod:`dreamer.world_model.fused_norm`, where it applies); anything else runs as the module itself.
"""

from __future__ import annotations

import torch
from torch import nn

from dreamer.world_model.deferred_grads import DeferredLayers
from dreamer.world_model.fused_norm import (
    fused_norm_available,
    rms_norm_silu,
    rms_norm_silu_pair,
)
from dreamer.world_model.held_out_casts import run_linear
from dreamer.world_model.rssm_parts import torchrl_rms_norm_eps
from dreamer.world_model.split_input import linear_on_parts


def run_layers(
    layers: nn.Sequential | list[nn.Module],
    value: torch.Tensor | tuple[torch.Tensor, ...],
    deferred: DeferredLayers | None,
    addend: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``layers(value)``, with the ``Linear`` layers' weight gradients left to ``deferred``, and
    each RMS norm followed by SiLU run as one fused kernel where it can (CUDA, triton).

    ``value`` may be a tuple of inputs that the first layer, a ``Linear``, reads as their
    concatenation; it then runs on each input's own weight columns instead
    (:func:`~dreamer.world_model.split_input.linear_on_parts`), unless its gradient is deferred:
    a deferred layer keeps its input at every step anyway, so it gets the concatenation.

    ``addend`` is added to ``value`` before the first layer: ``value``'s shape, or
    ``[rows, blocks, width / blocks]`` (any strides) for ``value`` ``[rows, width]``. When the
    first layers are a fused norm and SiLU, the kernel adds it as it reads ``value``.

    ``out``: where the result goes (e.g. columns of a wider buffer), written by the last layers'
    fused norm and SiLU; only where they run fused (:func:`writes_into_place`).
    """
    modules = list(layers)
    if isinstance(value, tuple):
        first = modules[0]
        if deferred is not None and deferred.handles(first.weight):
            value = torch.cat(value, -1)
        else:
            value = linear_on_parts(first, value)
            modules = modules[1:]
    fused = fused_norm_available(value)
    if out is not None and not (fused and _ends_fused(modules)):
        raise ValueError("out needs a stack that ends with a norm and SiLU run fused")
    if addend is not None:
        addend = addend.to(value.dtype)
        if not (fused and modules and _fusable_norm(modules, 0)):
            value = (value.reshape(addend.shape) + addend).reshape(value.shape)
            addend = None
    if deferred is None and not fused:
        for layer in modules:
            value = run_linear(layer, value) if isinstance(layer, nn.Linear) else layer(value)
        return value
    index = 0
    while index < len(modules):
        layer = modules[index]
        if fused and _fusable_norm(modules, index):
            grad_buffer = deferred.norm_grad(layer.weight) if deferred is not None else None
            eps = torchrl_rms_norm_eps(layer)
            last = index + 2 == len(modules)
            value = rms_norm_silu(
                value, layer.weight, eps, grad_buffer, addend, out if last else None
            )
            out = None if last else out
            addend = None
            index += 2
            continue
        value = (
            _run_linear(layer, value, deferred) if isinstance(layer, nn.Linear) else layer(value)
        )
        index += 1
    return value


def _run_linear(
    layer: nn.Linear, value: torch.Tensor, deferred: DeferredLayers | None
) -> torch.Tensor:
    """``layer(value)``, its weight gradient left to ``deferred`` if that handles it."""
    if deferred is not None and deferred.handles(layer.weight):
        return deferred.linear(value.flatten(0, -2), layer.weight).unflatten(0, value.shape[:-1])
    return run_linear(layer, value)


def first_product(
    stack: nn.Sequential, value: torch.Tensor, deferred: DeferredLayers | None
) -> torch.Tensor:
    """The first ``Linear`` of ``stack`` on ``value``, as :func:`run_layers` runs it, for a caller
    that runs it ahead of the rest (:func:`run_layer_pair`'s ``first_products``)."""
    return _run_linear(stack[0], value, deferred)


def run_layer_pair(
    stacks: tuple[nn.Sequential, nn.Sequential],
    values: tuple[torch.Tensor, torch.Tensor],
    outs: tuple[torch.Tensor, torch.Tensor],
    deferred: DeferredLayers | None,
    first_products: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`run_layers` of two ``Linear -> RMSNorm -> SiLU`` stacks on the same rows, each
    result written into its ``out``, with the two norms run as one kernel each way
    (:func:`~dreamer.world_model.fused_norm.rms_norm_silu_pair`) where both run fused; else
    each stack on its own. A stack whose :func:`first_product` is given starts from it."""
    modules = [list(stack) for stack in stacks]
    products = [
        _run_linear(m[0], value, deferred) if product is None else product
        for m, value, product in zip(modules, values, first_products, strict=True)
    ]
    buffers = [None, None]
    if deferred is not None:
        buffers = [deferred.norm_grad(m[1].weight) if len(m) > 1 else None for m in modules]
    paired = (
        all(_is_projection(m) for m in modules)
        and fused_norm_available(values[0])
        and (buffers[0] is None) == (buffers[1] is None)  # one scale's gradient held out: apart
    )
    if not paired:
        return tuple(
            run_layers(m[1:], product, deferred, out=out)
            for m, product, out in zip(modules, products, outs, strict=True)
        )
    (_, norm1, _), (_, norm2, _) = modules
    return rms_norm_silu_pair(
        products[0], norm1.weight, torchrl_rms_norm_eps(norm1), outs[0],
        products[1], norm2.weight, torchrl_rms_norm_eps(norm2), outs[1],
        None if buffers[0] is None else tuple(buffers),
    )  # fmt: skip


def _is_projection(modules: list[nn.Module]) -> bool:
    """Whether ``modules`` are exactly a ``Linear``, TorchRL's RMS norm and a SiLU."""
    return len(modules) == 3 and isinstance(modules[0], nn.Linear) and _fusable_norm(modules, 1)


def writes_into_place(layers: nn.Sequential, like: torch.Tensor) -> bool:
    """Whether :func:`run_layers` can write the stack's result on rows like ``like`` into a
    given ``out``: its last layers are a norm and SiLU, and they run fused there."""
    return fused_norm_available(like) and _ends_fused(list(layers))


def _ends_fused(modules: list[nn.Module]) -> bool:
    return len(modules) >= 2 and _fusable_norm(modules, len(modules) - 2)


def _fusable_norm(modules: list[nn.Module], index: int) -> bool:
    """Whether ``modules[index:]`` starts with TorchRL's RMS norm and a SiLU (one fused kernel)."""
    following = modules[index + 1] if index + 1 < len(modules) else None
    return torchrl_rms_norm_eps(modules[index]) is not None and isinstance(following, nn.SiLU)


def norm_scales(layers: nn.Sequential) -> list[torch.Tensor]:
    """Scales of the RMS norms in ``layers`` that :func:`run_layers` fuses with a following SiLU."""
    modules = list(layers)
    return [modules[i].weight for i in range(len(modules)) if _fusable_norm(modules, i)]


def linear_layers(layers: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every ``Linear`` in ``layers``, for :class:`DeferredLayers`."""
    return [(layer.weight, layer.bias) for layer in layers if isinstance(layer, nn.Linear)]
