"""The sequence filter with the Triton kernels against the torch code, on CUDA at the 12M sizes.

The CPU tests run the kernels through Triton's interpreter at toy sizes; this runs the compiled
kernels on a GPU at the default model's sizes (16x64 batch), float32 with TF32 off, and prints how
far the outputs and gradients of ``observe_sequence`` are from the torch path's with the same
noise. Under ``--bf16`` (autocast) the two paths round differently and a flipped latent sample
makes every later step differ, so only float32 is expected to agree closely. With ``--device cpu``
under ``TRITON_INTERPRET=1`` it runs the kernels' source through Triton's interpreter at these
sizes (minutes for a few rows and steps).

    python bench/check_fused_filter.py [--bf16] [--device cuda] [--batch 16] [--length 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamer.world_model import fused_ops  # noqa: E402
from dreamer.world_model.networks import ModelSize, make_rssm_cells  # noqa: E402
from dreamer.world_model.rssm import observe_sequence  # noqa: E402
from dreamer.world_model.sampling import race_noise  # noqa: E402

SIZE = ModelSize(
    deter=2048, hidden=512, units=256, depth=2, num_categoricals=32, num_classes=16, num_blocks=8
)


def filter_with_grads(inputs: dict, leaves: list[torch.Tensor], fused: bool, bf16: bool):
    """Outputs of the filter and the gradients of a fixed random weighting of them."""
    device = leaves[0].device
    fused_ops.set_fused_kernels(fused)
    try:
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            out = observe_sequence(**inputs)
    finally:
        fused_ops.set_fused_kernels(True)
    generator = torch.Generator(device=device).manual_seed(5)
    objective = sum(
        (torch.randn(v.shape, device=device, generator=generator) * v.float()).sum()
        for _, v in sorted(out.items())
    )
    return out, torch.autograd.grad(objective, leaves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    batch, steps, action_dim = args.batch, args.length, 8
    prior, posterior = (cell.to(device) for cell in make_rssm_cells(action_dim, SIZE))
    embed_root, embed_next = (
        torch.randn(batch, steps, SIZE.units, device=device, requires_grad=True) for _ in range(2)
    )
    action = (torch.rand(batch, steps, action_dim, device=device) * 2 - 1).requires_grad_()
    noise = race_noise((2, batch, steps, SIZE.num_categoricals, SIZE.num_classes), action)
    inputs = {
        "prior": prior,
        "posterior": posterior,
        "embed_root": embed_root,
        "embed_next": embed_next,
        "action": action,
        "is_init": torch.rand(batch, steps, 1, device=device) < 0.1,
        "noise": noise,
    }
    leaves = [*prior.parameters(), *posterior.parameters(), embed_root, embed_next, action]
    expected, expected_grads = filter_with_grads(inputs, leaves, False, args.bf16)
    got, got_grads = filter_with_grads(inputs, leaves, True, args.bf16)
    for key, value in expected.items():
        diff = (got[key].float() - value.float()).abs().max().item()
        scale = value.float().abs().max().item()
        print(f"{key:18s} max |fused - torch| {diff:.3g}  (max |torch| {scale:.3g})")
    flipped = (got["state"] != expected["state"]).any(-1).float().mean().item()
    print(f"rows whose latent sample differs: {flipped:.2%}")
    worst = max(
        ((g - e).abs().max() / e.abs().max().clamp_min(1e-12)).item()
        for g, e in zip(got_grads, expected_grads, strict=True)
    )
    print(f"largest gradient difference relative to that gradient's scale: {worst:.3g}")


if __name__ == "__main__":
    main()
