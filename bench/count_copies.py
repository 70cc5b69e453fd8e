"""Bytes written by copies and casts in one learner update, by where they are made.

Runs one eager update of the graph learner's step function (``GraphedUpdate`` without capture:
the same ops the graph replays) under a ``TorchDispatchMode`` that sums the output bytes of
copy-like ATen ops (copies, clones, concatenations, stacks, dtype casts, zero fills). Forward ops
are attributed to their innermost source lines in this repo, TorchRL or tensordict; backward ops
to the autograd node that runs them. Kernels inside Triton functions and copies made inside an
ATen kernel are not seen.

Usage::

    python bench/count_copies.py --device cuda --batch 256 [--bf16] [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_learner import make_cfg, random_sequences  # noqa: E402

from dreamer.agent import build_agent  # noqa: E402
from dreamer.training.graphed_update import GraphedUpdate  # noqa: E402
from dreamer.training.loop import make_training_env, use_tf32  # noqa: E402

COPY_OPS = {"copy_", "_to_copy", "clone", "cat", "stack", "zeros_like", "new_zeros", "fill_"}
SOURCES = ("/dreamer/", "torchrl/", "tensordict/")


class CopyCounter(TorchDispatchMode):
    """Sums bytes and counts of copy-like ops per (pass, where, op)."""

    def __init__(self):
        super().__init__()
        self.bytes: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket).split(".")[-1]
        if name not in COPY_OPS or not torch.is_tensor(out):
            return out
        if name == "_to_copy" and args[0].dtype != out.dtype:
            name = f"cast {args[0].dtype} -> {out.dtype}".replace("torch.", "")
        node = torch._C._current_autograd_node()
        if node is not None:
            key = ("backward", node.name(), name)
        else:
            frames = [f for f in traceback.extract_stack() if any(s in f.filename for s in SOURCES)]
            where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[::-1][:3])
            key = ("forward", where, name)
        self.bytes[key] += out.numel() * out.element_size()
        self.calls[key] += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="small12m")
    parser.add_argument("--batch", type=int, default=16, help="sequences per update (x64 steps)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    use_tf32(True)
    torch.manual_seed(0)
    cfg = make_cfg(args.model, args.device, False, 15)
    env = make_training_env(cfg)
    obs_dim, action_dim = env.observation_spec["policy"].shape[-1], env.action_spec.shape[-1]
    sample = random_sequences(args.batch, 64, obs_dim, action_dim, torch.device(args.device))
    update = GraphedUpdate(
        build_agent(cfg, env), sample, cuda_graph=False, mixed_precision=args.bf16
    )
    update(sample)  # first call: lazy initialisation, Triton compilation
    with CopyCounter() as counter:
        update(sample)
    total = sum(counter.bytes.values()) / 2**30
    print(
        f"{args.batch}x64 {'bf16' if args.bf16 else 'fp32'} on {args.device}: "
        f"{total:.2f} GiB in {sum(counter.calls.values())} copy-like ops"
    )
    for key, size in counter.bytes.most_common(args.top):
        print(f"{size / 2**20:10.1f} MiB x{counter.calls[key]:<5d} {' | '.join(key)}")


if __name__ == "__main__":
    main()
