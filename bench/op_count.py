"""Count the ATen ops one learner update dispatches: a device-free proxy for its kernel count.

The CUDA-graph learner is bound by the number of kernels it launches (docs/benchmarks.md), and
nearly every non-view ATen op is at least one kernel on a GPU. Counting them on a CPU shows
whether a change to the update makes fewer, larger kernels without needing the GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts every ATen op (forward and backward) dispatched while active, by overload name.

    Views (``reshape``, ``transpose``, ``slice``...) launch no kernel, so they are kept apart.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.views if func.is_view else self.ops)[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> OpCounter:
    """Run ``fn()`` once under an :class:`OpCounter` and return the counter."""
    with OpCounter() as counter:
        fn()
    return counter


def summary(counter: OpCounter, top: int = 15) -> str:
    """Totals and the ``top`` most frequent non-view ops, one per line."""
    lines = [
        f"aten ops per update: {sum(counter.ops.values())} "
        f"(+ {sum(counter.views.values())} views, which launch no kernel)"
    ]
    lines += [f"  {n:6d}  {name}" for name, n in counter.ops.most_common(top)]
    return "\n".join(lines)
