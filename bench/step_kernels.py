"""Kernels one step of the RSSM's loops launches, forward and backward, counted on a CPU.

On a GPU the filter's 64 steps and the dream's 15 are chains of small dependent kernels, so the
kernels a step launches set its time (docs/benchmarks.md). This counts them without a GPU: it
runs each loop with every Triton kernel on (through Triton's interpreter) at two lengths,
forward and backward, and prints the difference per step, by kernel:

* ``filter``: ``observe_sequence``, the world model's filter over replayed steps;
* ``dream``: the actor loss (TorchRL's ``DreamerV3ActorLoss`` as the agent builds it), whose
  imagination is the dream, from 7 start states.

Counted are the ATen ops that launch a kernel (allocations, views and dtype queries are not
kernels) and the Triton launches; the ops that the interpreter itself runs inside a Triton launch
are not counted. The loops' products of the carried belief, which a GPU runs on a stream beside
the loop's chain (:mod:`dreamer.world_model.belief_branch`), are counted under ``beside ...``
names, in both passes (autograd runs a backward op on its forward op's stream): the rest of a
step's kernels are its chain. Sizes are a toy model's (two layers deep, as the 12M preset): the
count does not depend on them, except that a CPU runs each matmul as one op where cuBLAS may run
two.

    python bench/step_kernels.py [--loop filter|dream] [--fp32] [--json]

The dream's rows are few here, so in float32 its products run in the skinny Triton kernel, where
the learner's 1,024 imagined rows run them in cuBLAS; its bf16 count is the learner's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamer.imagination import fused_dream  # noqa: E402
from dreamer.world_model import fused_ops, rssm  # noqa: E402
from dreamer.world_model.belief_branch import BeliefBranch  # noqa: E402
from dreamer.world_model.networks import ModelSize, make_rssm_cells  # noqa: E402
from dreamer.world_model.rssm import observe_sequence  # noqa: E402
from dreamer.world_model.sampling import race_noise  # noqa: E402

SIZE = ModelSize(
    deter=24, hidden=20, units=12, depth=2, num_categoricals=4, num_classes=3, num_blocks=3
)
# ATen ops that launch no kernel besides views: allocations and metadata.
NOT_KERNELS = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "promote_types",
    "set_",
}  # fmt: skip


class KernelCounter(TorchDispatchMode):
    """Counts kernel-launching ATen ops by ``name dtype``, and Triton launches by kernel name,
    leaving out what runs inside a Triton launch (the interpreter's own tensor ops)."""

    active: KernelCounter | None = None  # the one counting now (the branch's hooks read it)

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.inside_triton = 0
        self.beside = 0  # > 0 while the belief branch's work runs

    def count(self, name: str) -> None:
        self.counts[f"beside {name}" if self.beside else name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if not (self.inside_triton or func.is_view or name in NOT_KERNELS):
            dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor)), None)
            self.count(f"{func.__name__} {str(dtype).replace('torch.', '')}")
        return func(*args, **(kwargs or {}))


class CountedBranch(BeliefBranch):
    """A loop's belief branch, in line, with its kernels counted apart: those it launches
    forward, and backward those of the autograd nodes it made, which a GPU runs on its stream."""

    @contextlib.contextmanager
    def ahead(self, *inputs: torch.Tensor):
        counter = KernelCounter.active
        first = _next_node_number()
        counter.beside += 1
        try:
            with super().ahead(*inputs) as outputs:
                yield outputs
        finally:
            counter.beside -= 1
        # The nodes the block made: those its outputs' history reaches, made after it began.
        seen, pending = set(), [t.grad_fn for t in outputs]
        while pending:
            node = pending.pop()
            if node is None or node in seen or node._sequence_nr() < first:
                continue
            seen.add(node)
            node.register_prehook(_step_beside(1))
            node.register_hook(_step_beside(-1))
            pending.extend(following for following, _ in node.next_functions)


def _next_node_number() -> int:
    """The sequence number autograd gives the next node it makes (a view: no kernel counted)."""
    return torch.empty(0, requires_grad=True).view(0).grad_fn._sequence_nr() + 1


def _step_beside(change: int):
    def hook(*grads):
        KernelCounter.active.beside += change

    return hook


def _counting_triton(counter: KernelCounter):
    """Patch the interpreter's launch to count the kernel and mute the ops it runs itself."""
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        counter.count(f"triton {self.fn.__name__}")
        counter.inside_triton += 1
        try:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            counter.inside_triton -= 1

    InterpretedFunction.run = run
    return lambda: setattr(InterpretedFunction, "run", original)


@contextlib.contextmanager
def counting():
    """A :class:`KernelCounter` over the block, Triton's launches counted too."""
    counter = KernelCounter()
    restore = _counting_triton(counter)
    KernelCounter.active = counter
    try:
        with counter:
            yield counter
    finally:
        KernelCounter.active = None
        restore()


def _counted(run) -> tuple[collections.Counter, collections.Counter]:
    """The kernels of ``run()``'s forward pass (it returns the objective) and of its backward."""
    with counting() as forward:
        objective = run()
    with counting() as backward:
        objective.backward()
    return forward.counts, backward.counts


def _filter_counts(steps: int, bf16: bool) -> tuple[collections.Counter, collections.Counter]:
    torch.manual_seed(0)
    action_dim = 3
    prior, posterior = make_rssm_cells(action_dim, SIZE)
    embed = torch.randn(4, steps, SIZE.units, requires_grad=True)
    action = torch.rand(4, steps, action_dim) * 2 - 1
    is_init = torch.zeros(4, steps, 1, dtype=torch.bool)
    noise = race_noise((2, 4, steps, SIZE.num_categoricals, SIZE.num_classes), action)

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = observe_sequence(prior, posterior, embed, embed, action, is_init, noise)
            weights = {k: torch.randn(v.shape) for k, v in outputs.items()}
            return sum((v.float() * weights[k]).sum() for k, v in outputs.items())

    return _counted(run)


def _dream_counts(steps: int, bf16: bool) -> tuple[collections.Counter, collections.Counter]:
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from dreamer.agent import build_agent
    from dreamer.config import load_config
    from dreamer.training.concurrent_loss import loss_sum
    from dreamer.training.loop import make_training_env

    overrides = [
        "model=tiny",
        "model.depth=2",
        "device=cpu",
        "env.num_envs=4",
        "env.backend=mujoco",
    ]
    cfg = load_config(*overrides, f"imagination_horizon={steps}")
    cfg.compile.enabled = False
    torch.manual_seed(0)
    agent = build_agent(cfg, make_training_env(cfg))
    size = agent.size
    state = torch.zeros(7, size.num_categoricals, size.num_classes)
    state[..., 0] = 1
    start = TensorDict({"state": state.flatten(1), "belief": torch.randn(7, size.deter)}, [7])

    def run() -> torch.Tensor:
        with (
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
            set_exploration_type(ExplorationType.RANDOM),
        ):
            losses, _ = agent.loss.actor_loss(start)
            return loss_sum(losses)

    return _counted(run)


LOOPS = {"filter": _filter_counts, "dream": _dream_counts}


def kernels_per_step(loop: str = "filter", bf16: bool = True) -> dict[str, dict[str, float]]:
    """Kernels per step of ``loop`` (``forward``, ``backward``), by kernel: the counts at 6 steps
    less those at 3, over 3 (what every step adds, whatever runs once per call left out)."""
    counts = LOOPS[loop]
    original, branches = fused_ops.use_fused, (rssm.belief_branch, fused_dream.belief_branch)
    fused_ops.use_fused = lambda *tensors: True  # the CUDA path, on CPU tensors
    rssm.belief_branch = fused_dream.belief_branch = lambda like, loop: CountedBranch()
    try:
        counts(2, bf16)  # first-call work (e.g. the skinny matmul's counters) out of it
        short, long = counts(3, bf16), counts(6, bf16)
    finally:
        fused_ops.use_fused = original
        rssm.belief_branch, fused_dream.belief_branch = branches
    result = {}
    for index, phase in enumerate(("forward", "backward")):
        names = set(short[index]) | set(long[index])
        per = {n: (long[index][n] - short[index][n]) / 3 for n in names}
        result[phase] = {n: v for n, v in sorted(per.items(), key=lambda kv: -kv[1]) if v}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=sorted(LOOPS), default="filter")
    parser.add_argument("--fp32", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON line")
    args = parser.parse_args()
    counts = kernels_per_step(args.loop, bf16=not args.fp32)
    if args.json:
        print(json.dumps(counts))
        return
    precision = "float32" if args.fp32 else "bf16 autocast"
    print(f"{args.loop} step, {precision}, kernels per step:")
    for phase, per in counts.items():
        beside = sum(v for k, v in per.items() if k.startswith("beside "))
        print(f"{phase}: {sum(per.values()):g}, {beside:g} of them beside the chain")
        for name, count in per.items():
            print(f"  {count:5g}  {name}")


if __name__ == "__main__":
    main()
