"""How the training thread waits for the GPU: asleep, and never with the queue empty.

A plain CUDA sync spins a host core for as long as it waits. The training thread waits for most
of every update, and in ``pipeline.mode=process`` that core is taken from the physics threads:
collection beside a learner that waited on a blocking event ran 125.7k env steps/s against
117.2k with spinning waits (``bench/bench_contention.py``, H100 machine, 16 physics threads,
2026-11-24).
"""

from __future__ import annotations

from collections import deque

import torch


class UpdatePacer:
    """Keeps at most ``depth`` updates queued on the device, waiting for older ones asleep.

    With two in flight the next update is already queued when one finishes, so the GPU never
    waits for the host to launch it; the host still never runs more than one update ahead.
    """

    def __init__(self, device: torch.device, depth: int = 2):
        self.cuda = device.type == "cuda"
        self.depth = depth
        self.queued: deque[torch.cuda.Event] = deque()

    def launched(self) -> None:
        """Call after launching an update; returns once at most ``depth - 1`` others are queued."""
        if not self.cuda:
            return
        done = torch.cuda.Event(blocking=True)
        done.record()
        self.queued.append(done)
        while len(self.queued) >= self.depth:
            self.queued.popleft().synchronize()
