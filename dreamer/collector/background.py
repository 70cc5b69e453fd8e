"""Asynchronous collection that cannot race the replay buffer.

TorchRL's ``Collector.start(replay_buffer=...)`` extends the buffer from its own thread while the
learner samples from the main thread. On a GPU storage the two threads work on different CUDA
streams, so a sample can read rows an extend has not finished writing: NaNs and torn batches,
the reason TorchRL reverted its own asynchronous Dreamer loop. Here the background thread only
*produces* batches (env steps and acting-policy inference); it hands each finished batch to the
training thread through a bounded queue, and the training thread alone calls ``extend`` and
``sample``, so every buffer write and read is ordered on one thread and one stream.

The background thread acts with its own copy of the policy. The learner's weights are copied into
it under a lock (:meth:`BackgroundCollector.update_policy_weights_`), never while it is acting, so
no step uses half-updated weights. The copy may live on another device than the learner (the
two-GPU layout: simulation and acting on one GPU, learning on the other).
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

_DONE = object()


class LockedPolicy(TensorDictModuleBase):
    """Runs ``policy`` while holding ``lock``, so its weights cannot change mid-step."""

    def __init__(self, policy: nn.Module, lock: threading.Lock):
        super().__init__()
        self.policy = policy
        self.lock = lock
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with self.lock:
            return self.policy(tensordict)


def acting_copy(policy: nn.Module, device: torch.device | str) -> nn.Module:
    """A detached copy of ``policy`` on ``device`` for the collection thread."""
    clone = copy.deepcopy(policy).to(device)
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    return clone


class BackgroundCollector:
    """Iterates over a collector's batches, collecting ahead in a daemon thread.

    Args:
        make_collector: ``make_collector(policy) -> iterable of batches``; called in this thread
            with the locked acting copy.
        learner_policy: the policy the learner trains; its weights are copied to the acting copy.
        acting_device: where the acting copy runs (the simulator's device).
        max_batches_ahead: how many finished batches may wait for the learner; the thread blocks
            when the queue is full, so collection never runs unboundedly ahead of training.
    """

    def __init__(
        self,
        make_collector,
        learner_policy: nn.Module,
        acting_device: torch.device | str,
        max_batches_ahead: int = 2,
    ):
        self.learner_policy = learner_policy
        self.lock = threading.Lock()
        self.acting = acting_copy(learner_policy, acting_device)
        self.collector = make_collector(LockedPolicy(self.acting, self.lock))
        self.batches: queue.Queue = queue.Queue(maxsize=max_batches_ahead)
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="dreamer-collector", daemon=True)
        self.weight_syncs = 0

    def _run(self) -> None:
        try:
            for batch in self.collector:
                if batch.device is not None and batch.device.type == "cuda":
                    # The consumer reads the batch from another thread: make it complete first.
                    torch.cuda.current_stream(batch.device).synchronize()
                while not self.stopping.is_set():
                    try:
                        self.batches.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stopping.is_set():
                    break
        except BaseException as error:  # re-raised in the training thread
            self.error = error
        finally:
            self.batches.put(_DONE)

    def __iter__(self) -> Iterator[TensorDictBase]:
        if not self.thread.is_alive() and not self.stopping.is_set():
            self.thread.start()
        while True:
            batch = self.batches.get()
            if batch is _DONE:
                if self.error is not None:
                    raise RuntimeError("the background collector failed") from self.error
                return
            yield batch

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the acting policy still, e.g. while the learner captures its CUDA graph.

        Capture puts the device's random generator in capture mode; a policy sampling actions
        from another thread at that moment breaks the capture (seen on an H100, 2026-11-24).
        """
        with self.lock:
            yield

    def update_policy_weights_(self) -> None:
        """Copy the learner's current weights into the acting copy (between two acting steps)."""
        weights = TensorDict.from_module(self.learner_policy).data
        with self.lock, torch.no_grad():
            TensorDict.from_module(self.acting).update_(weights)
        self.weight_syncs += 1

    def shutdown(self) -> None:
        """Stop collecting and release the env."""
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.batches.get(timeout=0.1)
            except queue.Empty:
                pass
        self.collector.shutdown()
