"""Host time of one replay sample (``sample_sequences``), and where it goes.

The training thread samples the next batch while an update runs (``dreamer.replay.prefetch``);
whatever that costs on the host is time the thread holds the GIL and does not launch updates.
This fills a replay like the pipeline's (``N`` envs x 256 steps, episodes ending at rate 1/200),
times ``--samples`` calls of ``sample_sequences`` and prints the top entries of a ``cProfile`` of
them. Usage::

    python bench/bench_sampling.py --device cuda --num-envs 4096 --samples 50
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_learner import random_sequences  # noqa: E402

from dreamer.replay.buffer import (  # noqa: E402
    make_replay_buffer,
    sample_sequences,
    select_for_storage,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-length", type=int, default=64)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    device = torch.device(args.device)
    replay = make_replay_buffer(args.num_envs * 256, args.batch_size, args.batch_length, device)
    for _ in range(4):  # 4 collections of 64 steps fill the buffer, as in bench_pipeline
        collected = random_sequences(args.num_envs, 64, 60, 8, device)  # Ant's sizes
        replay.extend(select_for_storage(collected))

    def sample():
        return sample_sequences(replay, args.batch_size, args.batch_length, device)

    sample()  # the first sample builds the sampler's cached episode boundaries
    times = []
    for _ in range(args.samples):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        sample()
        times.append((time.perf_counter() - began) * 1e3)
    print(
        f"{args.num_envs} envs x 256 steps on {args.device}: host ms per sample median "
        f"{statistics.median(times):.2f} (min {min(times):.2f}, max {max(times):.2f})"
    )
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.samples):
        sample()
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats("tottime")
    stats.print_stats(args.top)


if __name__ == "__main__":
    main()
