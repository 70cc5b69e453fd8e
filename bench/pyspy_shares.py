"""Where each thread of a profiled run spends its samples, from ``py-spy record --format raw``.

Record a run with every thread's stack, idle ones included, and native frames (so a thread
waiting for the GIL shows as ``pthread_cond_timedwait`` right under a Python frame)::

    py-spy record --threads --idle --native -r 50 --format raw -o spy.txt -- \\
        python bench/bench_pipeline.py --device cuda --num-envs 4096 --modes async --train-ratio 0.24
    python bench/pyspy_shares.py spy.txt --functions sample_sequences NonFiniteGuard.observe

For each thread with Python frames it prints the share of its samples by what the stack ends in
(Python code, a GIL wait, a lock or queue wait, other native code) and the share of samples
whose stack passes through each of ``--functions``, and of those, by the same ending.
"""

from __future__ import annotations

import argparse
import gzip
from collections import Counter, defaultdict
from pathlib import Path

GIL_WAIT = "pthread_cond_timedwait"  # CPython's take_gil waits on a timed condition variable
LOCK_WAIT = "PyThread_acquire_lock_timed"  # threading locks, queues, events


def ending(frames: list[str]) -> str:
    """What a stack ends in, after its last Python frame."""
    python = [i for i, frame in enumerate(frames) if ".py:" in frame]
    native = [f.split(" (")[0] for f in frames[python[-1] + 1 :] if not f.startswith("0x")]
    if not native:
        return "python"
    if native[-1] == GIL_WAIT:
        return "GIL wait"
    if LOCK_WAIT in native:
        return "lock/queue wait"
    return "native: " + native[-1]


def read(path: Path):
    """``(thread name, frames, count)`` for every raw line with a Python frame."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as lines:
        for line in lines:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            head, frames = frames[0], frames[1:]
            if not any(".py:" in frame for frame in frames):
                continue
            name = head.split(":", 1)[1].strip() if ":" in head else "unnamed"
            yield name, frames, int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="py-spy --format raw output (optionally .gz)")
    parser.add_argument(
        "--functions", nargs="*", default=[], help="names, with or without their class"
    )
    parser.add_argument("--top", type=int, default=6, help="endings listed per thread")
    parser.add_argument("--min-samples", type=int, default=100)
    args = parser.parse_args()
    totals: Counter = Counter()
    endings: dict[str, Counter] = defaultdict(Counter)
    inside: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for name, frames, count in read(args.raw):
        end = ending(frames)
        totals[name] += count
        endings[name][end] += count
        names = {frame.split(" (")[0] for frame in frames}
        for function in args.functions:
            if any(n == function or n.endswith("." + function) for n in names):
                inside[name, function][end] += count
    for name, total in totals.most_common():
        if total < args.min_samples:
            continue
        shares = ", ".join(f"{e} {n / total:.1%}" for e, n in endings[name].most_common(args.top))
        print(f"{name}: {total} samples; {shares}")
        for function in args.functions:
            within = inside[name, function]
            count = sum(within.values())
            if count:
                parts = ", ".join(f"{e} {n / count:.0%}" for e, n in within.most_common(args.top))
                print(f"  in {function}: {count / total:.1%} of the thread ({parts})")


if __name__ == "__main__":
    main()
