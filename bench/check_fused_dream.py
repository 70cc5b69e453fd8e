"""The actor loss's dream with the Triton kernels against the torch code, on CUDA at 12M sizes.

``tests/test_fused_ops.py`` runs the kernels (the actor's fused TanhNormal sample, the GRU, the
latent sample) through Triton's interpreter at toy sizes; this runs the compiled kernels on a GPU
with the ``small12m`` agent, dreaming ``H`` steps from ``B x T`` random start states as
``DreamerV3ActorLoss`` does (held-out world model, random interaction), float32 with TF32 off,
from the same seed each way, and prints how far the rollouts and the actor's gradients are, over
the dreams in which every latent draw agreed (it also prints how many did not).

    python bench/check_fused_dream.py [--starts 1024] [--horizon 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.utils import hold_out_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_learner import make_cfg  # noqa: E402

from dreamer.agent import build_agent  # noqa: E402
from dreamer.training.loop import make_training_env  # noqa: E402
from dreamer.world_model import fused_ops  # noqa: E402


def dream(agent, start: TensorDict, horizon: int, fused: bool) -> TensorDict:
    """The actor loss's rollout from ``start`` (with its autograd graph), seeded alike."""
    fused_ops.set_fused_kernels(fused)
    torch.manual_seed(1)
    try:
        with set_exploration_type(ExplorationType.RANDOM), hold_out_net(agent.model_env):
            return agent.model_env.rollout(
                horizon,
                policy=agent.actor,
                auto_reset=False,
                tensordict=agent.model_env.reset(start.clone()),
                break_when_any_done=False,
            )
    finally:
        fused_ops.set_fused_kernels(True)


def actor_grads(agent, out: TensorDict, keys: list, rows: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of the actor's parameters of a fixed random weighting of ``out[rows]``."""
    generator = torch.Generator(device=rows.device).manual_seed(5)
    objective = 0.0
    for key in keys:
        value = out.get(key)
        weight = torch.randn(value.shape, device=value.device, generator=generator)
        objective = objective + (weight * value)[rows].sum()
    return torch.autograd.grad(objective, list(agent.actor.parameters()), allow_unused=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=1024, help="start states (16x64)")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--device", default="cuda", help="cpu runs the torch code both ways")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    cfg = make_cfg("small12m", args.device, False, args.horizon)
    agent = build_agent(cfg, make_training_env(cfg))
    size = agent.size
    state = torch.nn.functional.one_hot(
        torch.randint(size.num_classes, (args.starts, size.num_categoricals), device=device),
        size.num_classes,
    ).flatten(-2)
    belief = torch.randn(args.starts, size.deter, device=device)
    start = TensorDict({"state": state.float(), "belief": belief}, [args.starts], device=device)
    expected = dream(agent, start, args.horizon, fused=False)
    got = dream(agent, start, args.horizon, fused=True)
    # A latent sample drawn differently (two classes' race scores within rounding) sends that
    # dream elsewhere: compare the dreams in which every draw agreed, and count the others.
    flipped = (got["next", "state"] != expected["next", "state"]).any(-1).any(-1)
    same = ~flipped
    print(f"dreams with a latent sample drawn differently: {int(flipped.sum())} of {len(same)}")
    keys = sorted((k for k, v in expected.items(True, True) if v.is_floating_point()), key=str)
    for key in keys:
        value, other = expected.get(key)[same].detach(), got.get(key)[same].detach()
        diff = (other - value).abs().max().item()
        print(f"{'/'.join(key) if isinstance(key, tuple) else key:16s} max |fused - torch| "
              f"{diff:.3g}  (max |torch| {value.abs().max().item():.3g})")  # fmt: skip
    expected_grads = actor_grads(agent, expected, keys, same)
    got_grads = actor_grads(agent, got, keys, same)
    worst = max(
        ((g - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()
        for g, e in zip(got_grads, expected_grads, strict=True)
        if e is not None
    )
    print(f"largest actor gradient difference relative to that gradient's scale: {worst:.3g}")


if __name__ == "__main__":
    main()
