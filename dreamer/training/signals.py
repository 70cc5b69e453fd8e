"""SIGINT/SIGTERM become a stop request that the training loop polls between updates.

Cluster schedulers send SIGTERM some time before they kill a job, and Ctrl-C sends SIGINT; in both
cases the loop finishes the update in progress, writes a final checkpoint and returns normally,
so the process exits with status 0 and ``resume=<logdir>/checkpoints/last.pt`` continues it. A
second Ctrl-C while the request is pending raises ``KeyboardInterrupt`` at once (no checkpoint).
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: while active, SIGINT/SIGTERM set :attr:`received` instead of killing us.

    Handlers can only be installed from the main thread; elsewhere it does nothing.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning(
            "%s received: finishing this update, saving a checkpoint, stopping", self.received
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
