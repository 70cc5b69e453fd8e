"""How busy the learner keeps its device: the number behind ``perf/learner_busy``."""

from __future__ import annotations

import time

import torch


class LearnerClock:
    """Sums the device time of the updates between :meth:`start` and :meth:`stop` calls.

    On CUDA the updates are timed with events, read only when a figure is asked for, so timing
    adds no host sync to the loop; on a CPU the host clock is the device clock.
    """

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.pending: list[tuple] = []
        self.busy_s = 0.0
        self.total_busy_s = 0.0
        self.since = time.perf_counter()
        self.first_update: float | None = None
        self.updates = 0

    def start(self) -> None:
        if self.first_update is None:
            self.first_update = time.perf_counter()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.pending.append((event,))
        else:
            self.pending.append((time.perf_counter(),))

    def stop(self) -> None:
        begin = self.pending.pop()[0]
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((begin, end))
        else:
            elapsed = time.perf_counter() - begin
            self.busy_s += elapsed
            self.total_busy_s += elapsed
        self.updates += 1

    def _flush(self) -> None:
        for begin, end in self.pending:
            end.synchronize()
            elapsed = begin.elapsed_time(end) / 1e3
            self.busy_s += elapsed
            self.total_busy_s += elapsed
        self.pending.clear()

    def busy_fraction(self) -> float:
        """Share of the wall time since the last call that the device spent on updates."""
        self._flush()
        now = time.perf_counter()
        fraction = self.busy_s / max(now - self.since, 1e-9)
        self.busy_s, self.since = 0.0, now
        return fraction

    def summary(self, frames_since_first_update: int) -> dict[str, float]:
        """Steady-state rates from the first update to now (the random prefill left out)."""
        self._flush()
        if self.first_update is None:
            return {}
        wall = max(time.perf_counter() - self.first_update, 1e-9)
        return {
            "wall_s": wall,
            "env_steps_per_s": frames_since_first_update / wall,
            "updates_per_s": self.updates / wall,
            "learner_busy": self.total_busy_s / wall,
        }
