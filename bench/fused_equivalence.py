"""On a GPU: one update's losses and gradients with the Triton kernels on and off.

The CPU tests run the kernels under Triton's interpreter; this checks the compiled kernels on the
device itself. Same batch, same random draws, TF32 off so that only the kernels differ::

    python bench/fused_equivalence.py --batch 16 --length 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_learner import make_cfg, random_sequences  # noqa: E402

from dreamer.agent import build_agent  # noqa: E402
from dreamer.training.loop import make_training_env  # noqa: E402
from dreamer.world_model.fused_ops import set_fused_kernels  # noqa: E402


def loss_and_gradients(agent, sequences, fused: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """The summed losses of one update and every parameter's gradient, kernels on or off."""
    set_fused_kernels(fused)
    torch.manual_seed(0)
    agent.optimizer.zero_grad(set_to_none=True)
    losses = agent.loss(sequences)
    total = sum(value.sum() for key, value in losses.items() if key.startswith("loss_"))
    total.backward()
    grads = {
        n: p.grad.detach().clone() for n, p in agent.loss.named_parameters() if p.grad is not None
    }
    return float(total), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small12m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = make_cfg(args.model, "cuda", False, 15)
    env = make_training_env(cfg)
    agent = build_agent(cfg, env)
    obs_dim = env.observation_spec["policy"].shape[-1]
    sequences = random_sequences(
        args.batch, args.length, obs_dim, env.action_spec.shape[-1], "cuda"
    )
    fused_loss, fused = loss_and_gradients(agent, sequences, True)
    plain_loss, plain = loss_and_gradients(agent, sequences, False)
    set_fused_kernels(True)
    relative = {
        name: float((fused[name] - g).abs().max() / (g.abs().max() + 1e-12))
        for name, g in plain.items()
    }
    worst = max(relative, key=relative.get)
    print(f"total loss: fused {fused_loss!r}, unfused {plain_loss!r}")
    print(f"parameters with gradients: fused {len(fused)}, unfused {len(plain)}")
    print(f"largest relative gradient difference: {relative[worst]:.3g} ({worst})")


if __name__ == "__main__":
    main()
