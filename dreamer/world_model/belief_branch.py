"""The RSSM loops' products of the carried belief on a CUDA stream beside their chains.

Why: a filter step's kernels form one chain on one stream (docs/benchmarks.md, "Kernels per step
of the RSSM's loops"), and on a GPU the update is bound by how long its chains are, not by
arithmetic. Two of a step's products read only the belief the step before carried on: the GRU's
belief projection and its block-diagonal hidden layer. Nothing in step ``t``'s posterior head and
sample needs them, yet one stream runs them in line, two of the 12 kernels a step in each pass.
Here they run on a second stream as soon as step ``t``'s GRU kernel has written the belief, beside
the posterior's layers and the sample on the filter's own stream, which waits for them at the top
of step ``t + 1``. Autograd runs each backward op on its forward op's stream, so the two products'
input gradients leave the backward chain too, and a CUDA graph records the two streams as two
branches of the graph. The dream (:mod:`dreamer.imagination.fused_dream`) does the same beside
its prior head and sample, and once the state is sampled, runs the state projection's product
and the two projections' norm there too, beside the actor and the action projection: 4 of an
imagined step's 24 kernels forward and 22 backward leave its chain. The products are the same
ops on the same inputs, only earlier, so the results do not change
(``tests/test_belief_branch.py``).

Off CUDA, or with the branch off (config ``learner.belief_branch``, off by default for now),
:class:`BeliefBranch` runs the products in line on the current stream, at the same point in the
loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

# Off until timed on a GPU (docs/benchmarks.md): the CUDA tests of the captured update with it
# have not run there yet.
_enabled: frozenset[str] = frozenset()
LOOPS = ("filter", "dream")
# Each loop's branch runs at its chain's priority: the filter's on the world model's stream, above
# the actor-critic branch (dreamer.training.concurrent_loss.WORLD_MODEL_PRIORITY), the dream's on
# the actor-critic stream. One stream per loop, whatever stream the loop runs on, so that the
# learner's eager warm-up makes what the stream needs (cuBLAS's workspace, the skinny matmul's
# counters) before the graph is captured.
PRIORITIES = {"filter": -1, "dream": 0}
_streams: dict[tuple[torch.device, str], torch.cuda.Stream] = {}


def set_belief_branch(enabled: bool | Iterable[str]) -> frozenset[str]:
    """Turn the second stream on or off for later loops (config ``learner.belief_branch``):
    ``True`` for both, or the :data:`LOOPS` to run it in; returns the setting it replaces.

    A CUDA graph keeps the streams it was captured with: set this before building the learner.
    """
    global _enabled
    loops = frozenset(LOOPS if enabled is True else () if enabled is False else enabled)
    if not loops <= set(LOOPS):
        raise ValueError(f"belief branch loops {sorted(loops)}: expected some of {LOOPS}")
    previous, _enabled = _enabled, loops
    return previous


class BeliefBranch:
    """Where a loop runs the products of the belief it carries on: :meth:`ahead` around them,
    right after the GRU kernel that writes the belief, and :meth:`join` before the step that
    reads them. With no ``stream``, both are no-ops."""

    def __init__(self, stream: torch.cuda.Stream | None = None):
        self.stream = stream

    @contextmanager
    def ahead(self, *inputs: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        """Run the block on the branch's stream once the current stream has written ``inputs``.

        Yields a list for the block's outputs: they are marked as used by the current stream,
        and ``inputs`` as used by the branch's, so that the caching allocator reuses neither's
        memory before both streams are done with it.
        """
        outputs: list[torch.Tensor] = []
        if self.stream is None:
            yield outputs
            return
        main = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(main)
        for tensor in inputs:
            tensor.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            yield outputs
        for tensor in outputs:
            tensor.record_stream(main)

    def join(self) -> None:
        """Make the current stream wait for what :meth:`ahead` launched."""
        if self.stream is not None:
            torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)


def belief_branch(like: torch.Tensor, loop: str = "filter") -> BeliefBranch:
    """The branch for ``loop`` (one of :data:`LOOPS`) on ``like``'s device: the loop's second
    stream (at :data:`PRIORITIES`) on CUDA with the branch on for that loop, else in line."""
    if loop not in _enabled or like.device.type != "cuda":
        return BeliefBranch()
    key = (like.device, loop)
    if key not in _streams:
        _streams[key] = torch.cuda.Stream(like.device, priority=PRIORITIES[loop])
    return BeliefBranch(_streams[key])
