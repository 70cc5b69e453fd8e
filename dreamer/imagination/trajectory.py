"""A dream's states or beliefs over its steps, written by each step's kernel into one buffer.

Stacking a dream's per-step tensors after the loop copies the whole trajectory once per entry
(the rollout's ``state``, ``belief`` and their ``next`` twins: 0.22 ms of the update's forward
chain on an H100 at 16x64, docs/benchmarks.md). A :class:`Trajectory` instead hands each step
the slice its kernel writes (:func:`~dreamer.world_model.fused_ops.gru_gate_update_into`,
:func:`~dreamer.world_model.fused_sample.fused_sample_into`), and :meth:`Trajectory.assemble`
returns the filled buffer as one tensor whose backward hands each step the slice of the
gradient that belongs to it, as the stack's backward would
(:func:`~dreamer.world_model.filled_buffers.filled`).
"""

from __future__ import annotations

import torch

from dreamer.world_model.filled_buffers import filled


class Trajectory:
    """``[N, steps, D]`` values of a dream, slot by slot.

    Args:
        like: ``[N, D]``: the rows, width, dtype and device of a slot.
        steps: the dream's number of steps.
        with_start: slot 0 holds the dream's start value (the rollout's ``state``/``belief``,
            whose step ``t + 1`` is step ``t``'s output); else slot ``t`` is step ``t``'s output
            (the ``next`` entries).
    """

    def __init__(self, like: torch.Tensor, steps: int, with_start: bool):
        rows, width = like.shape
        self.buffer = torch.empty(rows, steps, width, dtype=like.dtype, device=like.device)
        self.offset = int(with_start)
        self.outputs: list[torch.Tensor] = []

    def slot(self, step: int) -> torch.Tensor:
        """Where step ``step``'s output goes: a ``[N, D]`` slice of the buffer."""
        return self.buffer[:, step + self.offset]

    def record(self, output: torch.Tensor) -> None:
        """The tensor a kernel returned for the next slot (its gradient is that slot's)."""
        self.outputs.append(output)

    def assemble(self, start: torch.Tensor | None = None) -> torch.Tensor:
        """The whole ``[N, steps, D]`` trajectory, every slot filled."""
        if len(self.outputs) + self.offset != self.buffer.shape[1]:
            raise RuntimeError(
                f"{len(self.outputs)} outputs recorded for {self.buffer.shape[1]} slots"
            )
        if (start is not None) != bool(self.offset):
            raise ValueError("a start value is given exactly when the trajectory has one")
        pieces = self.outputs
        if start is not None:
            with torch.no_grad():  # a plain copy: filled() routes its gradient
                self.buffer[:, 0].copy_(start)
            pieces = [start, *pieces]
        return filled(self.buffer, pieces, lambda grad: grad.unbind(1))
