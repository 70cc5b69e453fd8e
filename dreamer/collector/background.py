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

On CUDA the collection thread runs on its own high-priority stream. On the training thread's
stream every acting step would queue behind the updates in flight (one or two 34 ms updates:
``pipeline.mode=async`` collected 85k env steps/s beside a 52%-busy learner, H100, 2026-11-24).
Weights then cross in two steps: the training thread copies them into one of two staging copies
on its own stream, after the update that produced them, and the collection thread adopts the
newest staged copy whose copy has finished (checked without waiting) between two acting steps.
A staging copy is rewritten only after the collection thread's last read of it.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from dreamer.collector.process import copy_weights, policy_weights
from dreamer.replay.prefetch import keep_until_used

_DONE = object()


class LockedPolicy(TensorDictModuleBase):
    """Runs ``policy`` while holding ``lock``, so its weights cannot change mid-step.

    ``before_step`` (called under the lock) adopts newly staged weights on CUDA.
    """

    def __init__(self, policy: nn.Module, lock: threading.Lock, before_step=None):
        super().__init__()
        self.policy = policy
        self.lock = lock
        self.before_step = before_step
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with self.lock:
            if self.before_step is not None:
                self.before_step()
            return self.policy(tensordict)


ACTING_PRIORITY = -2


class StagedWeights:
    """Two staging copies of the acting weights between the training and collection streams.

    :meth:`publish` (training thread) copies the learner's weights into the copy the collection
    thread is not adopting, on the training stream, once the collection stream has finished
    reading that copy the last time; :meth:`adopt` (collection thread) copies the newest
    published version into the acting weights if its copy has completed, without waiting.
    Both run under the collector's lock, so their host-side bookkeeping never interleaves.
    """

    def __init__(self, acting: dict[str, torch.Tensor]):
        self.acting = acting
        self.device = next(iter(acting.values())).device
        self.staging = [{k: v.detach().clone() for k, v in acting.items()} for _ in range(2)]
        self.written: list[torch.cuda.Event | None] = [None, None]
        self.read: list[torch.cuda.Event | None] = [None, None]
        self.version = self.adopted = 0

    def publish(self, weights: dict[str, torch.Tensor]) -> None:
        slot = (self.version + 1) % 2
        stream = torch.cuda.current_stream(self.device)
        if self.read[slot] is not None:
            stream.wait_event(self.read[slot])
        copy_weights(self.staging[slot], weights)
        self.written[slot] = stream.record_event()
        self.version += 1

    def adopt(self) -> None:
        slot = self.version % 2
        if self.version == self.adopted or not self.written[slot].query():
            return
        copy_weights(self.acting, self.staging[slot])
        self.read[slot] = torch.cuda.current_stream(self.device).record_event()
        self.adopted = self.version


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
        cuda = torch.device(acting_device).type == "cuda"
        # The thread's eager kernels (the env's copies, the collector's, an eager policy) go
        # first when ready: above the learner's world-model branch (WORLD_MODEL_PRIORITY, -1)
        # and its actor-critic branch (0). A captured acting graph keeps the priority it was
        # captured at instead (GraphedPolicy's ``priority``; make_batch_source says which).
        self.stream = torch.cuda.Stream(acting_device, priority=ACTING_PRIORITY) if cuda else None
        self.acting_weights = policy_weights(self.acting)
        self.staged = StagedWeights(self.acting_weights) if cuda else None
        before_step = self.staged.adopt if cuda else None
        self.collector = make_collector(LockedPolicy(self.acting, self.lock, before_step))
        self.batches: queue.Queue = queue.Queue(maxsize=max_batches_ahead)
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="dreamer-collector", daemon=True)
        self.weight_syncs = 0

    def _run(self) -> None:
        try:
            with torch.cuda.stream(self.stream):  # a no-op for None (CPU acting)
                self._collect()
        except BaseException as error:  # re-raised in the training thread
            self.error = error
        finally:
            self.batches.put(_DONE)

    def _collect(self) -> None:
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

    def __iter__(self) -> Iterator[TensorDictBase]:
        if not self.thread.is_alive() and not self.stopping.is_set():
            self.thread.start()
        while True:
            batch = self.batches.get()
            if batch is _DONE:
                if self.error is not None:
                    raise RuntimeError("the background collector failed") from self.error
                return
            if self.stream is not None:  # made on the collection stream, extended on this one
                keep_until_used(batch, torch.cuda.current_stream(self.stream.device))
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
        """Copy the learner's current weights into the acting copy (between two acting steps).

        On CUDA they are staged and adopted by the collection thread once copied (see
        :class:`StagedWeights`); on a CPU they are copied right away.
        """
        weights = policy_weights(self.learner_policy)
        with self.lock, torch.no_grad():
            if self.staged is not None:
                self.staged.publish(weights)
            else:
                copy_weights(self.acting_weights, weights)
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
