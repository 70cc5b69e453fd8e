"""The block GRU's input features written in place by its projections, not concatenated.

The GRU's shared hidden layer reads ``cat([belief projection, state projection, action
projection])``: a copy kernel at every step of the filter's and the dream's forward chains. Here
the three projections' fused norms write their outputs into their columns of one buffer
(:func:`~dreamer.world_model.fused_norm.rms_norm_silu`'s ``out``), and
:meth:`GruFeatures.join` hands the buffer on as one tensor whose backward gives each projection
its columns of the gradient, as the concatenation's would. The filter and the dream each make
one buffer for all their steps; the filter's action projection, which runs on every step at
once, fills its columns before the loop.
"""

from __future__ import annotations

import torch

from dreamer.world_model.deferred_grads import compute_dtype
from dreamer.world_model.fast_layers import linear_layers, writes_into_place
from dreamer.world_model.filled_buffers import filled
from dreamer.world_model.rssm_parts import PriorParts


class GruFeatures:
    """The block GRU's features ``[..., belief | state | action]`` as one buffer that the three
    projections' fused norms write their columns of, instead of a concatenation of their outputs
    (a copy kernel at every step of the filter's and the dream's forward chains).

    Made by :func:`gru_features`; ``buffer`` ``[..., width]``, its rows at one stride (e.g.
    ``[B, T, width]`` for every step of a loop, :meth:`step` giving one step's).
    """

    def __init__(self, buffer: torch.Tensor, widths: tuple[int, int, int]):
        self.buffer, self.widths = buffer, widths
        self.edges = [0, widths[0], widths[0] + widths[1], sum(widths)]

    def columns(self, index: int) -> torch.Tensor:
        """Where projection ``index`` (0 belief, 1 state, 2 action) writes its output."""
        return self.buffer[..., self.edges[index] : self.edges[index + 1]]

    def step(self, index: int) -> GruFeatures:
        """Step ``index``'s features of a ``[B, T, width]`` buffer."""
        return GruFeatures(self.buffer[:, index], self.widths)

    def join(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """The buffer, once ``pieces`` (the projections' outputs, written into their
        :meth:`columns`) fill it, as one tensor with gradients."""
        return filled(self.buffer, pieces, lambda grad: grad.split(self.widths, -1))


def gru_features(
    parts: PriorParts, like: torch.Tensor, leading: tuple[int, ...]
) -> GruFeatures | None:
    """An empty :class:`GruFeatures` ``[*leading, width]`` for projections on ``like``'s rows,
    in the matmuls' dtype; None where a projection cannot write in place (its norm not fused
    there), and the features are concatenated."""
    stacks = (parts.belief_projection, parts.state_projection, parts.action_projection)
    if not all(writes_into_place(stack, like) for stack in stacks):
        return None
    widths = tuple(linear_layers(stack)[-1][0].shape[0] for stack in stacks)
    dtype = compute_dtype(like) or like.dtype
    return GruFeatures(like.new_empty(*leading, sum(widths), dtype=dtype), widths)
