"""Count the ATen ops one learner update dispatches: a device-free proxy for its kernel count.

The CUDA-graph learner is bound by the number of kernels it launches (docs/benchmarks.md), and
nearly every non-view ATen op is at least one kernel on a GPU. Counting them on a CPU shows
whether a change to the update makes fewer, larger kernels without needing the GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class OpCounter(TorchDispatchMode):
    """Counts every ATen op (forward and backward) dispatched while active, by overload name.

    Views (``reshape``, ``transpose``, ``slice``...) launch no kernel, so they are kept apart.
    ``flops`` adds up the floating-point operations of the ops PyTorch's flop counter knows
    (matrix products and convolutions: nearly all of an update's arithmetic).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()
        self.flops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        (self.views if func.is_view else self.ops)[name] += 1
        flops = flop_registry.get(func.overloadpacket)
        if flops is not None:
            self.flops[name] += flops(*args, **kwargs, out_val=out)
        return out


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
    lines.append(f"FLOPs per update (matrix products): {sum(counter.flops.values()) / 1e9:.1f} G")
    return "\n".join(lines)
