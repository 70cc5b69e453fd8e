"""Buffers that kernels fill piece by piece, as tensors autograd can follow.

A copy that only gathers pieces (``torch.stack`` of a loop's outputs, ``torch.cat`` of a layer's
inputs) costs a kernel and a pass over the bytes. Where a piece's own kernel can write it into
its place in one buffer instead, these two functions keep autograd right:

* :func:`alias` makes the piece the kernel returns a tensor on the buffer's memory that autograd
  does not see as a view of the buffer (as a view, the next piece written into the same buffer
  would count as an in-place change of it, which autograd refuses);
* :func:`filled` returns the whole buffer as one tensor whose backward hands each piece its part
  of the gradient, as the stack's or the concatenation's backward would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def alias(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor on ``tensor``'s memory (same shape and strides), not a view of it for autograd."""
    return tensor.new_empty(0).set_(
        tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride()
    )


class _Filled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, holder: list[torch.Tensor], split: Callable, *pieces: torch.Tensor):
        ctx.split = split
        return alias(holder[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, *ctx.split(grad)


def filled(
    buffer: torch.Tensor,
    pieces: Sequence[torch.Tensor],
    split: Callable[[torch.Tensor], Sequence[torch.Tensor]],
) -> torch.Tensor:
    """``buffer``, once ``pieces`` (tensors with gradients on its memory, or values copied into it
    without autograd) fill it, as one tensor with gradients; ``split(grad)`` gives each piece
    its part of the buffer's gradient, in order."""
    return _Filled.apply([buffer], split, *pieces)
