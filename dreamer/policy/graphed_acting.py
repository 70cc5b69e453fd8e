"""The acting policy replayed as a CUDA graph: one launch per control step instead of ~100.

Acting for 4,096 envs is a chain of small kernels (encoder, GRU, posterior sample, actor, action
sample) issued by TensorDict and TorchRL modules from Python. On an idle H100 that took ~5 ms per
control step; beside the learner's process it took ~12 ms, because the GPU time-slices between
the two processes' contexts and every burst of acting kernels waits for the learner's slice to
end (``bench/bench_contention.py``). Replaying the captured policy issues the whole step at once
and leaves the host almost nothing to do.

The wrapper keeps the policy's behaviour: the same keys in and out, fresh random draws at every
replay (CUDA graphs advance the generator's offset on each replay), weights read where they live
(the learner's in-place updates and the process worker's weight copies are seen by the next
replay). One graph is captured per (batch shape, exploration type); anything it cannot replay
(a CPU policy, a new shape beyond ``max_graphs``) runs the policy eagerly.
"""

from __future__ import annotations

import warnings

import torch
from tensordict import TensorDictBase
from tensordict.nn import InteractionType, TensorDictModuleBase, set_interaction_type
from tensordict.nn.probabilistic import interaction_type


class GraphedPolicy(TensorDictModuleBase):
    """``policy`` with its forward replayed from CUDA graphs (see the module docstring).

    Args:
        policy: a TensorDict module whose forward has no host syncs and no shape that depends
            on the data (true of the acting policy: resets are ``where``s, samples are on-device).
        warmup: eager calls on a side stream before capture (cuBLAS and allocator warm-up).
        max_graphs: graphs kept at most; further (shape, exploration) keys run eagerly.
        priority: the CUDA stream priority its kernels run at (lower runs first). A graph keeps
            the priority of the stream it was captured on, whichever stream replays it (PyTorch
            instantiates graphs with node priorities), so it is captured on a stream of this
            priority (``make_batch_source`` says which the async collector uses, and why).
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        warmup: int = 3,
        max_graphs: int = 4,
        priority: int = 0,
    ):
        super().__init__()
        self.policy = policy
        self.in_keys, self.out_keys = list(policy.in_keys), list(policy.out_keys)
        self.warmup, self.max_graphs, self.priority = warmup, max_graphs, priority
        self.capture_stream: torch.cuda.Stream | None = None
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, TensorDictBase, TensorDictBase]] = {}
        self.failed: set[tuple] = set()

    def _key(self, tensordict: TensorDictBase) -> tuple | None:
        device = tensordict.device or tensordict.get(self.in_keys[0]).device
        if device.type != "cuda" or torch.is_grad_enabled():
            return None
        return (tuple(tensordict.batch_size), str(device), str(interaction_type()))

    @torch.no_grad()
    def _capture(self, key: tuple, tensordict: TensorDictBase):
        static_in = tensordict.select(*self.in_keys).clone()
        device = torch.device(key[1])
        # Not torch.cuda.graph's default capture stream: that one has the default priority.
        side = torch.cuda.Stream(device, priority=self.priority)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.policy(static_in.clone())
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: in pipeline.mode=async this runs in the collection thread while the
        # training thread keeps using CUDA; only this thread's calls must be capture-safe.
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            static_out = self.policy(static_in.clone()).select(*self.out_keys)
        self.capture_stream = side
        self.graphs[key] = (graph, static_in, static_out)
        return self.graphs[key]

    def _try_capture(self, key: tuple, tensordict: TensorDictBase):
        """Capture, or remember that this key runs eagerly (with a warning saying why)."""
        try:
            return self._capture(key, tensordict)
        except RuntimeError as error:  # e.g. an op that syncs with the host
            self.failed.add(key)
            warnings.warn(f"acting policy not captured ({error}); it runs eagerly", stacklevel=3)
            return None

    @torch.no_grad()
    def capture(self, example: TensorDictBase, interaction: InteractionType) -> None:
        """Capture the graph for ``example``'s shape under ``interaction`` now (no-op off CUDA).

        ``pipeline.mode=async`` calls this on the training thread before collection starts:
        capture puts the CUDA generator in capture mode, and the training thread's replay
        sampling draws from that generator, so the two must not overlap.
        """
        with set_interaction_type(interaction):
            key = self._key(example)
            if key is not None and key not in self.graphs and key not in self.failed:
                self._try_capture(key, example.select(*self.in_keys))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        key = self._key(tensordict)
        if key is None or key in self.failed:
            return self.policy(tensordict)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.policy(tensordict)
            entry = self._try_capture(key, tensordict)
            if entry is None:
                return self.policy(tensordict)
        graph, static_in, static_out = entry  # a key exists only with gradients off
        static_in.update_(tensordict.select(*self.in_keys))
        graph.replay()
        # The next replay overwrites the outputs; the caller may keep these.
        tensordict.update(static_out.clone())
        return tensordict
