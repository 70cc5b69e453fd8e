"""The next training batch sampled while the current update runs.

A replay sample is host work with a few host syncs (slice boundaries, dropping the padding). On
the training stream each sync waits for the update queued before it, so the GPU idled while the
host sampled: the trainer managed ~22 updates/s of a 34 ms update (77% busy) in
``pipeline.mode=process`` (``bench/bench_pipeline.py``, H100, 2026-11-24). Here the sample runs
on a side CUDA stream right after an update is launched: its syncs wait only for its own
kernels, and the update is long done sampling by the time it finishes.

Ordering (the race that made TorchRL revert its asynchronous Dreamer loop, avoided here):

* a sample reads storage rows only after every ``extend`` before it has written them (the side
  stream waits for an event recorded after the last extend);
* an ``extend`` overwrites rows only after the pending sample has read them (the training stream
  waits for the side stream first: :meth:`SamplePrefetcher.before_extend`);
* an update reads its batch only after it was sampled (the training stream waits for the side
  stream in :meth:`SamplePrefetcher.take`), and its memory, allocated on the side stream, is not
  reused before the training stream's work queued at the time it is freed is done
  (``record_stream``).

Everything runs on one thread, so the buffer's host-side state has a single writer. Off CUDA,
or with ``enabled=False``, :meth:`take` samples on the spot and :meth:`prefetch` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDictBase


def keep_until_used(batch: TensorDictBase, stream: torch.cuda.Stream) -> None:
    """Let ``stream`` read ``batch``'s CUDA tensors that another stream allocated: their memory
    is not reused before the work ``stream`` has queued by the time they are freed is done."""
    for tensor in batch.values(include_nested=True, leaves_only=True):
        if tensor.device.type == "cuda":
            tensor.record_stream(stream)


class SamplePrefetcher:
    """Samples batch ``k + 1`` on a side stream while update ``k`` runs (see module docstring).

    Args:
        sample: draws one training batch from the replay (on the current stream).
        device: the learner's device; prefetching is used on CUDA only.
        enabled: ``False`` samples each batch when it is taken.
    """

    def __init__(self, sample: Callable[[], TensorDictBase], device: torch.device, enabled=True):
        self.sample = sample
        self.enabled = bool(enabled) and device.type == "cuda"
        self.side = torch.cuda.Stream(device) if self.enabled else None
        self.extended: torch.cuda.Event | None = None
        self.pending: TensorDictBase | None = None

    def take(self) -> TensorDictBase:
        """The next batch: the prefetched one if any, else one sampled now."""
        if self.pending is None:
            return self.sample()
        batch, self.pending = self.pending, None
        stream = torch.cuda.current_stream(self.side.device)
        stream.wait_stream(self.side)
        keep_until_used(batch, stream)
        return batch

    def prefetch(self) -> None:
        """Sample the next batch on the side stream (call right after launching an update)."""
        if not self.enabled or self.pending is not None:
            return
        with torch.cuda.stream(self.side):
            if self.extended is not None:
                self.side.wait_event(self.extended)
            self.pending = self.sample()

    def before_extend(self) -> None:
        """Let the pending sample finish reading before an extend may overwrite its rows."""
        if self.enabled:
            torch.cuda.current_stream(self.side.device).wait_stream(self.side)

    def after_extend(self) -> None:
        """Make later samples wait for this extend's writes."""
        if self.enabled:
            self.extended = torch.cuda.Event()
            self.extended.record()
