"""Collection and training together: env steps/s, updates/s and learner busy %, per pipeline mode.

Runs the real training loop (:func:`dreamer.training.loop.train`) for a fixed number of frames in
each pipeline mode and reports two sets of figures:

* ``balanced``: over whole batches, from the arrival of the second batch after the first update
  to the arrival of the last one, so the updates counted are owed for as many batches as the
  frames counted (:meth:`~dreamer.training.learner_clock.LearnerClock.summary`). These are the
  figures to judge a target by.
* ``from first update``: from the first update to the end (the random prefill left out). It
  opens with the learner working off the prefill batch's updates and closes with the last
  batch's updates after collection has stopped, so it understates collection: by 6-10% against
  the balanced figures in 3M-frame runs of 4,096 envs on the H100 (2026-11-25), with busy
  shares within 1.5 points of each other. Figures in the docs before that date are of this kind.

Usage::

    python bench/bench_pipeline.py --device cuda --num-envs 4096 --frames 3000000 \
        --train-ratio 0.1 --modes sync async process --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import describe_machine  # noqa: E402

from dreamer.config import load_config  # noqa: E402
from dreamer.training.loop import train  # noqa: E402


def run(mode: str, args) -> dict:
    steps = 64  # frames_per_batch must give every env one full batch_length sequence
    overrides = [
        f"task={args.task}",
        f"model={args.model}",
        f"device={args.device}",
        f"env.device={args.env_device or args.device}",
        f"pipeline.acting_device={args.env_device or args.device}",
        "env.backend=mujoco",
        f"env.num_envs={args.num_envs}",
        f"collector.frames_per_batch={args.num_envs * steps}",
        f"collector.init_random_frames={args.num_envs * 64}",
        f"collector.total_frames={args.frames}",
        f"replay.capacity={args.num_envs * 256}",
        f"train_ratio={args.train_ratio}",
        f"batch_size={args.batch_size}",
        *args.override,
        f"pipeline.mode={mode}",
        "compile.enabled=false",
        "log.progress_bar=false",
        "log.image_every_updates=1000000000",
        "checkpoint.every_updates=1000000000",
    ]
    cfg = load_config(*overrides)
    with tempfile.TemporaryDirectory() as logdir:
        cfg.logdir = logdir
        result = train(cfg)
    return {
        "mode": mode,
        "updates": result["updates"],
        "frames": result["frames"],
        **result["perf"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Isaac-Ant-v0")
    parser.add_argument("--model", default="small12m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--env-device",
        help="simulation and acting device (default: --device); e.g. cuda:0 "
        "with --device cuda:1 for the two-GPU layout",
    )
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=3_000_000)
    parser.add_argument("--train-ratio", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per update (x64)")
    parser.add_argument("--modes", nargs="+", default=["sync", "async"])
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="further Hydra overrides, e.g. env.physics_threads=16",
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        help="Python's GIL switch interval (sys.setswitchinterval; default 5 ms): how long a "
        "thread waits for the GIL before it asks the holder to drop it",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    rows = []
    for mode in args.modes:
        rows.append(run(mode, args))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        **describe_machine(args.device),
        "command": " ".join(sys.argv),
        "switch_interval_ms": sys.getswitchinterval() * 1e3,
    }
    print(meta)
    print(
        f"{'mode':7s} {'window':18s} {'env steps/s':>12s} {'updates/s':>10s} "
        f"{'learner busy':>13s} {'wall s':>7s}"
    )
    for row in rows:
        for window, prefix in (("balanced", "balanced_"), ("from first update", "")):
            if f"{prefix}wall_s" in row:
                print(
                    f"{row['mode']:7s} {window:18s} {row[f'{prefix}env_steps_per_s']:12,.0f} "
                    f"{row[f'{prefix}updates_per_s']:10.2f} {row[f'{prefix}learner_busy']:13.0%} "
                    f"{row[f'{prefix}wall_s']:7.1f}"
                )
    # Where the training thread's wall time went (the rest: bookkeeping and logging).
    for row in rows:
        phases = {k[len("host_") :]: v for k, v in row.items() if k.startswith("host_")}
        print(
            f"{row['mode']:7s} training thread: "
            + ", ".join(f"{name} {share:.0%}" for name, share in phases.items())
        )
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
