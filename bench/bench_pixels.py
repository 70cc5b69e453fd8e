"""What the embedded camera costs: control steps/s with and without ``pixels``, per task and N.

Each figure counts one control step of one env through ``step_and_maybe_reset`` with random
actions (what the collector calls), so the "pixels" rate includes rendering every env's frame and
moving it into the output tensor. The GL backend is :func:`pick_gl_backend`'s choice unless
``MUJOCO_GL`` is set.

Usage::

    python bench/bench_pixels.py [--tasks Isaac-Ant-v0] [--num-envs 16 64] [--size 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamer.env.mujoco_env import MujocoBatchedEnv  # noqa: E402


def steps_per_second(task: str, n: int, size: int | None, seconds: float) -> tuple[float, str]:
    """Control steps/s of ``n`` envs (frames of ``size``x``size`` when given) and the GL backend."""
    pixels = None if size is None else {"height": size, "width": size}
    env = MujocoBatchedEnv(task, n, seed=0, pixels=pixels)
    backend = env.camera.backend if env.camera is not None else "-"
    gen = torch.Generator().manual_seed(0)
    actions = torch.rand(16, n, env.task_spec.act_dim, generator=gen) * 2 - 1
    td = env.reset()
    for k in range(3):
        td["action"] = actions[k]
        _, td = env.step_and_maybe_reset(td)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        td["action"] = actions[steps % 16]
        _, td = env.step_and_maybe_reset(td)
        steps += 1
    rate = steps * n / (time.perf_counter() - start)
    env.close()
    return rate, backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["Isaac-Ant-v0", "Isaac-Cartpole-v0"])
    parser.add_argument("--num-envs", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print("| task | N | steps/s, no pixels | steps/s, pixels | ms per frame | GL |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task in args.tasks:
        for n in args.num_envs:
            plain, _ = steps_per_second(task, n, None, args.seconds)
            rate, backend = steps_per_second(task, n, args.size, args.seconds)
            per_frame = 1e3 * (1 / rate - 1 / plain)
            print(f"| {task} | {n} | {plain:,.0f} | {rate:,.0f} | {per_frame:.2f} | {backend} |")


if __name__ == "__main__":
    main()
