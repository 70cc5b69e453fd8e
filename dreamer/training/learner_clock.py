"""How busy the learner keeps its device (the number behind ``perf/learner_busy``), and where
the training thread's own time goes."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class LearnerClock:
    """Sums the device time of the updates between :meth:`start` and :meth:`stop` calls.

    On CUDA the updates are timed with events, read only when a figure is asked for, so timing
    adds no host sync to the loop; on a CPU the host clock is the device clock.
    """

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.began = None  # the open update's start: a CUDA event or a host time
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # not yet read
        self.busy_s = 0.0
        self.total_busy_s = 0.0
        self.since = time.perf_counter()
        self.first_update: float | None = None
        self.updates = 0
        # Host seconds per phase of the training thread, from the first update on.
        self.host_s: dict[str, float] = defaultdict(float)

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        if self.first_update is None:
            self.first_update = time.perf_counter()
        self.began = self._now()

    def stop(self) -> None:
        end = self._now()
        if self.cuda:
            self.pending.append((self.began, end))
        else:
            self._add(end - self.began)
        self.updates += 1

    def _add(self, seconds: float) -> None:
        self.busy_s += seconds
        self.total_busy_s += seconds

    def _flush(self) -> None:
        for begin, end in self.pending:
            end.synchronize()
            self._add(begin.elapsed_time(end) / 1e3)
        self.pending.clear()

    def busy_fraction(self) -> float:
        """Share of the wall time since the last call that the device spent on updates."""
        self._flush()
        now = time.perf_counter()
        fraction = self.busy_s / max(now - self.since, 1e-9)
        self.busy_s, self.since = 0.0, now
        return fraction

    @contextmanager
    def host_phase(self, name: str) -> Iterator[None]:
        """Counts the training thread's wall time inside the block as ``name`` (once updates
        have begun). The shares tell a learner starved of data (``waiting_for_batch``) from one
        held up by the device (``pacing``) or by its own host work."""
        began = time.perf_counter()
        try:
            yield
        finally:
            if self.first_update is not None:
                self.host_s[name] += time.perf_counter() - began

    def timed(self, items: Iterable, name: str) -> Iterator:
        """``items``, with the time spent waiting for each one counted as ``name``."""
        iterator = iter(items)
        while True:
            with self.host_phase(name):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    def summary(self, frames_since_first_update: int) -> dict[str, float]:
        """Steady-state rates from the first update to now (the random prefill left out), and
        the share of that wall time in each host phase (``host_<phase>``)."""
        self._flush()
        if self.first_update is None:
            return {}
        wall = max(time.perf_counter() - self.first_update, 1e-9)
        return {
            "wall_s": wall,
            "env_steps_per_s": frames_since_first_update / wall,
            "updates_per_s": self.updates / wall,
            "learner_busy": self.total_busy_s / wall,
            **{f"host_{name}": seconds / wall for name, seconds in sorted(self.host_s.items())},
        }
