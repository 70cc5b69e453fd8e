"""The fast learner: one whole DreamerV3 update replayed as a single CUDA graph.

An eager update is thousands of small kernels (64 RSSM filter steps, 15 imagination steps, their
backward passes, the optimizer) each paying a Python and launch cost; on a GPU the learner is
launch-bound, not compute-bound. :class:`GraphedUpdate` records world-model loss, imagination,
actor and critic losses, the backward pass, the optimizer step and the slow-critic EMA once into
a CUDA graph and then replays it per update, reading each new batch from a static input buffer.
Nothing in the graph talks to the host. The RSSM and loss modules are not compiled (card fix 4);
they get fast from capture alone. bf16 autocast is optional and uses no GradScaler.

On a CPU (or with ``cuda_graph=False``) the same step function runs eagerly, which is what the
equivalence test compares with :func:`dreamer.training.update.update_step`.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase

from dreamer.agent import Agent
from dreamer.training.capturable_optimizer import (
    advance_host_steps,
    device_step_counters,
    init_optimizer_state,
    optimizer_step,
)
from dreamer.training.concurrent_loss import WORLD_MODEL_PRIORITY, branch_stream
from dreamer.training.flat_optimizer import FlatOptimizerStep
from dreamer.training.update import gradient_norm, update_step


class GraphedUpdate:
    """Callable ``update(sequences) -> metrics`` doing one DreamerV3 update per call.

    Args:
        agent: the agent whose loss, optimizer and target updater are used.
        example: a ``[B, T]`` replay sample with the keys, shapes, dtypes and device of every
            later call (the graph is specialised to them).
        cuda_graph: capture on CUDA (default: when ``example`` lives on a CUDA device).
        mixed_precision: run forward and backward under bf16 autocast (CUDA only).
        warmup_updates: eager updates run on a side stream before capture (cuBLAS handles,
            compiled-MLP code and optimizer state get made there); the agent's parameters,
            buffers, optimizer state and RNG are restored afterwards, so warm-up trains nothing.
        concurrent_branches: run the actor-critic losses on a second stream beside the world
            model's (:mod:`dreamer.training.concurrent_loss`; CUDA only).
        prioritise_world_model: capture the world model's branch on a higher-priority stream
            than the actor-critic branch (with ``concurrent_branches``; the benchmark's
            ``_flat`` variants turn it off to measure it).
    """

    def __init__(
        self,
        agent: Agent,
        example: TensorDictBase,
        *,
        cuda_graph: bool | None = None,
        mixed_precision: bool = False,
        warmup_updates: int = 3,
        grad_hook=None,
        concurrent_branches: bool = True,
        prioritise_world_model: bool = True,
    ):
        self.agent = agent
        self.grad_hook = grad_hook
        # The loss lists keys the world model writes itself (e.g. the symlog target); keep
        # only what a replay sample provides.
        present = set(example.keys(True))
        self.keys = [key for key in agent.loss.in_keys if key in present]
        self.device = example.get(self.keys[0]).device
        self.mixed_precision = mixed_precision and self.device.type == "cuda"
        self.side_stream = branch_stream(self.device, concurrent_branches)
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the replay sample on a CUDA device.")
        # Captured on a stream of its own (not torch.cuda.graph's shared default, which the
        # acting policy's graphs also use), above the actor-critic branch when asked.
        self.capture_stream = None
        if self.cuda_graph:
            prioritise = concurrent_branches and prioritise_world_model
            priority = WORLD_MODEL_PRIORITY if prioritise else 0
            self.capture_stream = torch.cuda.Stream(self.device, priority=priority)
        init_optimizer_state(agent.optimizer)
        self.steps = device_step_counters(agent.optimizer)
        # Three kernels instead of ~54 where the parameters are flat and Triton runs.
        self.flat_step = FlatOptimizerStep.create(agent.optimizer, self.steps)
        self.static_output: TensorDictBase | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.cuda_graph:
            # The graph reads every batch from this buffer; eager updates need no copy.
            self.static_input = example.select(*self.keys).clone()
            self._capture(warmup_updates)

    def _step(self, sequences: TensorDictBase) -> TensorDictBase:
        """Forward, backward, device-counter optimizer step and EMA; detached metrics."""
        return update_step(
            self.agent,
            sequences,
            step_optimizer=self._step_optimizer,
            mixed_precision=self.mixed_precision,
            grad_hook=self.grad_hook,
            side_stream=self.side_stream,
        )

    def _step_optimizer(self) -> torch.Tensor:
        """The optimizer step with its counters on the device; the gradients' global norm."""
        if self.flat_step is not None:
            return self.flat_step.step()
        norm = gradient_norm(self.agent.optimizer)
        optimizer_step(self.agent.optimizer, self.steps)
        return norm

    def _training_state(self) -> list[torch.Tensor]:
        """Every tensor an update writes: parameters, buffers, optimizer state, step counters."""
        tensors = {id(t): t for t in self.agent.loss.parameters()}
        tensors.update({id(t): t for t in self.agent.loss.buffers()})
        for state in self.agent.optimizer.state.values():
            tensors.update({id(t): t for t in state.values() if torch.is_tensor(t)})
        tensors[id(self.steps)] = self.steps
        return list(tensors.values())

    def _capture(self, warmup_updates: int) -> None:
        state = self._training_state()
        saved = [t.detach().clone() for t in state]
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_updates):
                self._step(self.static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        with torch.no_grad():
            for tensor, value in zip(state, saved, strict=True):
                tensor.copy_(value)
        torch.cuda.set_rng_state(rng, self.device)
        # Gradients are allocated inside the graph's pool by the captured backward.
        self.agent.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        # thread_local: the background collector may call into CUDA from its own thread while
        # this one captures; only this thread's calls must be capture-safe.
        with torch.cuda.graph(
            self.graph, stream=self.capture_stream, capture_error_mode="thread_local"
        ):
            self.static_output = self._step(self.static_input)

    def __call__(self, sequences: TensorDictBase) -> TensorDictBase:
        """One update on ``sequences`` (same layout as the example); returns its metrics."""
        if self.graph is None:
            metrics = self._step(sequences.select(*self.keys))
        else:
            self.static_input.update_(sequences.select(*self.keys))
            self.graph.replay()
            metrics = self.static_output.clone()
        advance_host_steps(self.agent.optimizer)
        return metrics


def make_learner(cfg, agent: Agent, example: TensorDictBase, grad_hook=None):
    """``update(sequences) -> metrics`` as ``cfg.learner`` asks.

    ``auto`` replays a CUDA graph on CUDA and runs eagerly on a CPU or when ``grad_hook`` is set
    (the data-parallel all-reduce has not been tried inside a captured graph).
    """
    mode = str(cfg.learner.mode)
    if mode == "auto":
        on_cuda = example.get("action").device.type == "cuda"
        mode = "graph" if on_cuda and grad_hook is None else "eager"
    concurrent = bool(cfg.learner.concurrent_branches)
    if mode == "eager":
        stream = branch_stream(example.get("action").device, concurrent)
        return lambda sequences: update_step(
            agent, sequences, grad_hook=grad_hook, side_stream=stream
        )
    return GraphedUpdate(
        agent,
        example,
        cuda_graph=True,
        mixed_precision=bool(cfg.learner.mixed_precision),
        grad_hook=grad_hook,
        concurrent_branches=concurrent,
    )
