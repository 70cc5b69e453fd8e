"""A cut in autograd's graph between the posterior filter and everything that reads its outputs.

Why: in one ``backward()`` of the summed DreamerV3 loss, the world model's heads (decoder,
reward, continue, prior and KL) get their backward only after the whole forward pass, imagination
included, is queued; on a GPU they then run just before the filter's backward, on the update's
critical path (docs/benchmarks.md, "The update's critical path on two streams"). Their losses do
not depend on imagination at all. With the filter's outputs cut off as leaves, the heads' losses
can be backpropagated down to the cut as soon as they exist, while the actor-critic stream is
still imagining; the filter's own backward then runs once, from the gradients gathered at the cut
(the heads' and the replay critic's), beside the imagination's backward as before. The
gradients are the ones a single ``backward()`` gives, up to the order of float sums
(``tests/test_filter_cut.py``). With the two waits below, an update at 16x64 took 19.6 instead of
20.2-20.4 ms in float32 (H100, docs/benchmarks.md, "Each stream waits only for what it reads";
that section's bf16 figures were of an update whose gradients went NaN, fixed by
:func:`dreamer.training.concurrent_loss.uncached_casts`).

The cut also marks where imagination can start: ``ready`` is a CUDA event recorded once the
posterior states exist, so the actor-critic stream waits for them rather than for the heads'
forward pass as well.

Usage: ``with cut_filter_outputs() as cut:`` around the world model's forward pass; inside it,
:func:`~dreamer.world_model.rssm.observe_sequence` hands its outputs to :meth:`FilterCut.cut`,
and :meth:`FilterCut.mark_ready` is called when the states imagination starts from are written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_active: ContextVar[FilterCut | None] = ContextVar("filter_cut", default=None)


class FilterCut:
    """The filter's outputs and the leaves standing in for them downstream."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.leaves: list[torch.Tensor] = []
        self.ready: torch.cuda.Event | None = None

    def cut(self, tensor: torch.Tensor) -> torch.Tensor:
        """A leaf holding ``tensor``'s values; its gradient is later sent into ``tensor``."""
        if not tensor.requires_grad:
            return tensor
        leaf = tensor.detach().requires_grad_()
        self.outputs.append(tensor)
        self.leaves.append(leaf)
        return leaf

    def mark_ready(self, device: torch.device) -> None:
        """Record, on the current CUDA stream, that the states imagination starts from exist."""
        if device.type == "cuda" and self.ready is None:
            self.ready = torch.cuda.Event()
            self.ready.record(torch.cuda.current_stream(device))

    def backward_targets(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The filter's outputs and the gradients gathered at their leaves, for one
        ``torch.autograd.backward`` (outputs whose leaf got no gradient are left out)."""
        pairs = zip(self.outputs, self.leaves, strict=True)
        kept = [(output, leaf.grad) for output, leaf in pairs if leaf.grad is not None]
        return [output for output, _ in kept], [grad for _, grad in kept]


@contextmanager
def cut_filter_outputs(enabled: bool = True) -> Iterator[FilterCut | None]:
    """Make the world model's forward passes inside cut their filter outputs (yields the cut;
    ``None`` when not ``enabled`` or when gradients are off)."""
    cut = FilterCut() if enabled and torch.is_grad_enabled() else None
    token = _active.set(cut)
    try:
        yield cut
    finally:
        _active.reset(token)


def active_cut() -> FilterCut | None:
    """The cut that the filter's outputs go through now, if any."""
    return _active.get()
