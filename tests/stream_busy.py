"""A CUDA stream kept busy for a set time by one spinning program, for tests of which stream
waits for which.

Why not large matmuls: they fill every SM, so the other stream's small kernels queue behind
them and its progress measures the GPU's sharing, not the dependencies under test. One program
of a dependent chain of float operations holds a single SM and leaves the rest to the other
stream.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["iterations"])  # one compile for every count
def _spin_kernel(value_ptr, iterations):
    value = tl.load(value_ptr)
    for _ in range(iterations):
        value = value * 0.999999 + 1e-6
    tl.store(value_ptr, value)


def _spin(iterations: int) -> None:
    """Queue one program of ``iterations`` dependent steps on the current stream."""
    _spin_kernel[(1,)](torch.ones(1, device="cuda"), iterations)


def spin_iterations(seconds: float = 1.0) -> int:
    """How many spin steps take about ``seconds`` on this GPU (timed with CUDA events)."""
    _spin(1000)  # compiles the kernel
    probe = 1 << 22
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _spin(probe)
    end.record()
    end.synchronize()
    per_step_ms = max(start.elapsed_time(end), 1e-3) / probe
    return max(1, int(seconds * 1000 / per_step_ms))


def keep_busy(iterations: int) -> torch.cuda.Event:
    """Queue :func:`spin_iterations`' worth of spinning on the current stream; the returned
    event completes when it is done."""
    _spin(iterations)
    done = torch.cuda.Event()
    done.record()
    return done
