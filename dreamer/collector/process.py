"""Collection in its own process: env, acting policy and TorchRL ``Collector`` beside the learner.

``pipeline.mode=async`` collects in a thread sharing the training process's interpreter (and
GIL). Here a spawned worker builds the env from the config (``make_training_env``), an acting
policy (``build_agent(...).policy``, weights replaced by the learner's) and TorchRL's
``Collector`` (``make_collector``), and only *produces* batches: the training process alone
calls the replay's ``extend`` and ``sample``, so TorchRL's async-Dreamer race cannot happen.
TorchRL's ``MultiaSyncDataCollector`` was not used: its worker rewrites one shared buffer and is
told to continue before the batch is handed out (it may overwrite a batch being extended), runs
one batch ahead at most, and its weight updates may land while it acts.

Batches: the worker fills a ring of ``max_batches_ahead + 1`` preallocated batches (the selected
``keys`` only), shared once (CPU shared memory, or CUDA IPC), and sends slot numbers through a
pipe; the training process hands a slot back when it asks for the next batch, so at most
``max_batches_ahead`` batches wait. Pipes pickle in the sender: an unsendable message fails
there, not silently in a queue's feeder thread. CUDA IPC lifetime: the worker owns the ring and
keeps it until :meth:`ProcessCollector.shutdown` has dropped the training process's mappings; a
CUDA slot is cloned before it is yielded and handed back once that copy's event completed. A
yielded CPU batch is valid until the next one is asked for.

Weights: two shared copies on the acting device and a version counter; version ``v`` lives in
copy ``v % 2``. The learner writes the next version into the copy the worker does not read and
publishes it (bumps the counter under a lock) once written (on CUDA when an event says so,
checked without blocking); the worker, between two acting steps, copies the published version
into its acting weights under the same lock. No step acts with half-copied weights and the
learner never waits for the worker.

Checkpoints: the training process's own env only gives specs and is never stepped. Each batch
carries the worker env's generator state, mirrored into that env, so a checkpoint holds the
state after the last batch consumed and a resumed worker starts from it. The worker's torch
generator (action noise, random prefill) is not saved; it is seeded from the training process's
generator, so a resumed run does not replay the first run's noise.
"""

from __future__ import annotations

import signal
import traceback
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import wait

import torch
import torch.multiprocessing as mp
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from dreamer.training.checkpoint import env_generator
from dreamer.training.restore import COMPILED_PREFIX

WorkerFactory = Callable[[], tuple[object, nn.Module, Callable[[nn.Module], object]]]
"""Runs in the worker: returns ``(env or None, acting policy, make_collector(policy))``."""


def policy_weights(policy: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers under their uncompiled names (compile differs between processes)."""
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in policy.state_dict(keep_vars=True).items()}


@torch.no_grad()
def copy_weights(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
    """``dst[k].copy_(src[k])`` for every name; the names must match."""
    if dst.keys() != src.keys():
        raise RuntimeError(f"policy weights differ: {sorted(dst.keys() ^ src.keys())[:5]}")
    for key, tensor in dst.items():
        tensor.copy_(src[key])


def _sync(device: torch.device) -> None:
    """Wait for this process's work on ``device``: a peer process reads the result next."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class SyncedPolicy(TensorDictModuleBase):
    """The worker's acting policy: adopts the newest published weights between two acting steps."""

    def __init__(self, policy: nn.Module, shared: list[dict], version, lock):
        super().__init__()
        self.policy, self.shared, self.version, self.lock = policy, shared, version, lock
        self.in_keys, self.out_keys = list(policy.in_keys), list(policy.out_keys)
        policy.requires_grad_(False)  # acting outputs must cross the process boundary
        self.weights = policy_weights(policy)
        self.device = next(iter(self.weights.values())).device
        self.seen = -1

    def pull(self) -> None:
        """Copy the published version in if it is newer than the one acting."""
        if self.version.value == self.seen:
            return
        with self.lock:  # the learner cannot publish (and so reuse this copy) meanwhile
            seen = self.version.value
            copy_weights(self.weights, self.shared[seen % 2])
            _sync(self.device)
        self.seen = seen

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        self.pull()
        return self.policy(tensordict)


def _wire(td: TensorDictBase) -> tuple[dict, tuple[int, ...], str | None]:
    """A tensordict as plain tensors, which torch's multiprocessing pickler shares."""
    return td.to_dict(), tuple(td.batch_size), None if td.device is None else str(td.device)


def _unwire(wire: tuple[dict, tuple[int, ...], str | None]) -> TensorDictBase:
    data, batch_size, device = wire
    return TensorDict(data, batch_size=batch_size, device=device)


def _worker(factory, shared, version, lock, ready, free, stop, slots, keys, seed, env_rng) -> None:
    """The worker process: collect, copy each batch into a free ring slot, announce the slot."""
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the training process
    # answers them (final update, checkpoint) and then stops this worker itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.manual_seed(seed)
    parent = mp.parent_process()
    collector, ring, generator = None, None, None
    try:
        env, policy, make_collector = factory()
        generator = env_generator(env) if env is not None else None
        if generator is not None and env_rng is not None:
            generator.bit_generator.state = env_rng
        acting = SyncedPolicy(policy, shared, version, lock)
        acting.pull()
        collector = make_collector(acting)
        for batch in collector:
            if stop.is_set():
                return
            batch = batch.select(*keys, strict=False) if keys else batch
            if ring is None:
                ring = [batch.clone() for _ in range(slots)]
                if batch.device is None or batch.device.type == "cpu":
                    ring = [slot.share_memory_() for slot in ring]
                ready.send(("ring", [_wire(slot) for slot in ring]))
            while not free.poll(0.2):
                if stop.is_set() or not parent.is_alive():
                    return
            slot = free.recv()
            ring[slot].update_(batch)
            if batch.device is not None:
                _sync(batch.device)  # the slot is complete before the learner reads it
            state = generator.bit_generator.state if generator is not None else None
            ready.send(("batch", slot, state))
        ready.send(("done",))
    except BaseException:
        ready.send(("error", traceback.format_exc()))
    finally:
        try:
            if collector is not None:
                collector.shutdown()
        finally:
            # CUDA IPC: the learner may still map ring slots; keep them until it says stop.
            while not stop.wait(0.2) and parent.is_alive():
                pass


class ProcessCollector:
    """Iterates over batches ``[num_envs, T]`` collected by a spawned worker process.

    Args:
        factory: picklable; called in the worker (see :data:`WorkerFactory`).
        learner_policy: the policy the learner trains; its weights go to the worker.
        acting_device: where the worker acts (the simulator's device).
        max_batches_ahead: finished batches that may wait for the learner.
        keys: the batch entries to send (``None``: all); the acting state stays in the worker.
        mirror_env: the training process's spec-only env: its generator state goes to the worker
            at start (a resumed run's) and follows the worker env's after every batch.
        shutdown_timeout_s: how long :meth:`shutdown` waits before killing the worker.
    """

    def __init__(
        self,
        factory: WorkerFactory,
        learner_policy: nn.Module,
        acting_device: torch.device | str,
        max_batches_ahead: int = 2,
        keys: Sequence | None = None,
        mirror_env=None,
        shutdown_timeout_s: float = 30.0,
    ):
        self.learner_policy = learner_policy
        self.acting_device = torch.device(acting_device)
        self.shutdown_timeout_s = shutdown_timeout_s
        self.generator = env_generator(mirror_env) if mirror_env is not None else None
        weights = policy_weights(learner_policy)
        self.shared = [
            {k: v.detach().to(self.acting_device, copy=True) for k, v in weights.items()}
            for _ in range(2)
        ]
        if self.acting_device.type == "cpu":
            for copy in self.shared:
                for tensor in copy.values():
                    tensor.share_memory_()
        ctx = mp.get_context("spawn")
        self.version, self.lock, self.stop = ctx.Value("q", 0, lock=False), ctx.Lock(), ctx.Event()
        self.ready, ready = ctx.Pipe(duplex=False)
        free, self.free = ctx.Pipe(duplex=False)
        slots = int(max_batches_ahead) + 1
        for slot in range(slots):
            self.free.send(slot)
        seed = int(torch.randint(2**31 - 1, ()))
        env_rng = self.generator.bit_generator.state if self.generator is not None else None
        args = (factory, self.shared, self.version, self.lock, ready, free, self.stop)
        args += (slots, list(keys) if keys else None, seed, env_rng)
        self.process = ctx.Process(target=_worker, args=args, name="dreamer-collector", daemon=True)
        self.process.start()  # now: the worker builds its env while the learner sets up
        ready.close()  # the worker's ends: its own copies are open in it
        free.close()
        self.ring: list[TensorDictBase] | None = None
        self.held: tuple[int, torch.cuda.Event | None] | None = None  # the slot the learner has
        self.pending: tuple[int, torch.cuda.Event] | None = None  # a written, unpublished version
        self.weight_syncs = 0
        # Also at interpreter exit without shutdown(): multiprocessing's own exit handler would
        # send the worker a SIGTERM it ignores and then wait for it forever.
        self._stop_worker = weakref.finalize(
            self, _stop_worker, self.process, self.stop, shutdown_timeout_s
        )

    def _receive(self) -> tuple:
        wait([self.ready, self.process.sentinel])
        lost = None
        try:
            if self.ready.poll():  # what it sent before it ended, if it ended
                return self.ready.recv()
        except (EOFError, OSError) as error:  # cut short, or shared memory it can no longer pass
            lost = error
        self.process.join(5)
        raise RuntimeError(
            f"the collector process died (exit code {self.process.exitcode}) "
            "without reporting an error"
        ) from lost

    def _release(self) -> None:
        if self.held is not None:
            slot, copied = self.held
            if copied is not None:
                copied.synchronize()  # our copy of the slot is done (long ago, in practice)
            self.free.send(slot)
            self.held = None

    def __iter__(self) -> Iterator[TensorDictBase]:
        while True:
            self._release()
            self._publish_ready()
            message = self._receive()
            kind = message[0]
            if kind == "ring":
                self.ring = [_unwire(wire) for wire in message[1]]
            elif kind == "error":
                raise RuntimeError(f"the collector process failed:\n{message[1]}")
            elif kind == "done":
                return
            else:
                _, slot, env_rng = message
                if self.generator is not None and env_rng is not None:
                    self.generator.bit_generator.state = env_rng
                batch, copied = self.ring[slot], None
                if batch.device is not None and batch.device.type == "cuda":
                    batch = batch.clone()
                    copied = torch.cuda.Event()
                    copied.record(torch.cuda.current_stream(batch.device))
                self.held = (slot, copied)
                yield batch

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing to hold: the worker has its own CUDA context and generator, so the learner's
        graph capture cannot be disturbed by it (the thread mode must hold its policy still)."""
        yield

    def _publish(self, version: int) -> None:
        with self.lock:
            self.version.value = version
        self.weight_syncs += 1

    def _publish_ready(self) -> None:
        if self.pending is not None and self.pending[1].query():
            self._publish(self.pending[0])
            self.pending = None

    def update_policy_weights_(self) -> None:
        """Send the learner's current weights to the worker; never waits for the device.

        On CUDA the copy is published once it has finished (checked here and before each batch);
        a call while the previous copy is still running is skipped: newer weights follow.
        """
        self._publish_ready()
        if self.pending is not None:
            return
        version = self.version.value + 1
        copy_weights(self.shared[version % 2], policy_weights(self.learner_policy))
        if self.acting_device.type == "cuda":
            written = torch.cuda.Event()
            written.record(torch.cuda.current_stream(self.acting_device))
            self.pending = (version, written)
        else:
            self._publish(version)

    def shutdown(self) -> None:
        """Stop the worker (killed after ``shutdown_timeout_s``) and release its env."""
        self.ring, self.held = None, None  # drop the CUDA IPC mappings before the worker exits
        self._stop_worker()  # runs once
        self.ready.close()
        self.free.close()


def _stop_worker(process, stop, timeout_s: float) -> None:
    """Ask the worker to stop; kill it if it has not within ``timeout_s``."""
    stop.set()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(5)
