"""Where one update's time goes, read off the kernel trace that ``bench_learner.py --profile
--trace FILE`` writes: the update's phases in time order and the gaps between them.

A CUDA graph replays its branches on streams of the driver's choosing, so phases are found by
their kernels, not by stream: the GRU kernels run once per filter step (forward and backward)
and once per imagined step, on the branch that runs that loop; the imagined returns and the
replayed returns are one Triton kernel each (:mod:`dreamer.actor_critic.lambda_return`); the
optimizer step ends with ``_apply_update`` (:mod:`dreamer.training.flat_optimizer`).

Usage::

    python bench/bench_learner.py --device cuda --profile --trace T.json --runs 16x64:ours_graph_bf16
    python bench/trace_phases.py T.json

Prints, in ms from the update's first kernel: the filter's forward, the imagination's forward up
to its returns, the replay critic, the filter's backward and the imagination's backward, the
work between the filter's backward and the optimizer, and the optimizer step; then the wait
between the replay critic's end and the filter's backward (the filter's backward needs the
replay critic's gradient and nothing after it). With ``--kernels N``, also each phase's kernels
per stream: their count, their summed time and the ``N`` names that took longest.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path


def load_trace(path: Path) -> list[dict]:
    """The kernels of a trace file (JSON, or gzipped JSON), sorted by start time."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as file:
        kernels = json.load(file)
    return sorted(kernels, key=lambda k: k["start_us"])


def _end(kernel: dict) -> float:
    return kernel["start_us"] + kernel["us"]


def _loop_streams(kernels: list[dict], name: str) -> tuple[list[dict], list[dict]]:
    """The launches of kernel ``name`` on the stream that runs it most often (the filter's, one
    per replayed step) and on the stream that runs it second most (the imagination's, one per
    imagined step: so the sequences must be longer than the imagination's horizon)."""
    by_stream: dict = defaultdict(list)
    for kernel in kernels:
        if kernel["name"].startswith(name):
            by_stream[kernel["stream"]].append(kernel)
    ranked = sorted(by_stream.values(), key=len, reverse=True)
    if len(ranked) < 2:
        raise ValueError(f"{name} runs on fewer than two streams: is this a two-branch update?")
    return ranked[0], ranked[1]


def _main_run(launches: list[dict], gap_us: float = 200.0) -> list[dict]:
    """The longest run of ``launches`` with no gap over ``gap_us`` between them: the loop's
    steps, without a stray launch of the same kernel elsewhere in the update."""
    runs, current = [], [launches[0]]
    for previous, kernel in zip(launches, launches[1:], strict=False):
        if kernel["start_us"] - _end(previous) > gap_us:
            runs.append(current)
            current = []
        current.append(kernel)
    runs.append(current)
    return max(runs, key=len)


def _first(kernels: list[dict], name: str) -> dict:
    for kernel in kernels:
        if kernel["name"].startswith(name):
            return kernel
    raise ValueError(f"no {name} in the trace")


def update_phases(kernels: list[dict]) -> dict[str, tuple[float, float]]:
    """``{phase: (start_ms, end_ms)}`` of one update's trace, measured from its first kernel.

    ``kernels``: one update's kernels as ``bench_learner.write_trace`` writes them (``name``,
    ``stream``, ``start_us``, ``us``).
    """
    origin = kernels[0]["start_us"]
    filter_forward, dream_forward = map(_main_run, _loop_streams(kernels, "_gru_forward_kernel"))
    filter_backward, dream_backward = map(_main_run, _loop_streams(kernels, "_gru_backward_kernel"))
    # The imagination's branch starts with its first kernel. Its backward runs the losses' and
    # heads' backward before its steps, on a stream the replay may share with other work, so
    # only its steps (the GRU's launches) are reported.
    dream_start = min(k["start_us"] for k in kernels if k["stream"] == dream_forward[0]["stream"])
    returns = _first(kernels, "_dream_forward_kernel")
    replay = _first(kernels, "_replay_kernel")
    # The replay critic's work: its stream's kernels from the replayed returns until the
    # filter's backward begins.
    backward_start = filter_backward[0]["start_us"]
    replay_work = [
        k
        for k in kernels
        if k["stream"] == replay["stream"] and replay["start_us"] <= k["start_us"] < backward_start
    ]
    # The optimizer's stream also ran the filter's forward; its step is what it runs after the
    # filter's backward.
    optimizer = _first(kernels, "_apply_update")
    backward_end = _end(filter_backward[-1])
    step_start = min(
        k["start_us"]
        for k in kernels
        if k["stream"] == optimizer["stream"] and k["start_us"] >= backward_end
    )

    def span(start: float, end: float) -> tuple[float, float]:
        return ((start - origin) / 1e3, (end - origin) / 1e3)

    return {
        "encoder and filter forward": span(origin, _end(filter_forward[-1])),
        "imagination forward to its returns": span(dream_start, _end(returns)),
        "replay critic": span(replay["start_us"], max(map(_end, replay_work))),
        "filter backward": span(backward_start, _end(filter_backward[-1])),
        "imagination backward, its steps": span(
            dream_backward[0]["start_us"], _end(dream_backward[-1])
        ),
        "after the filter backward": span(backward_end, step_start),
        "optimizer step": span(step_start, max(map(_end, kernels))),
    }


def report(kernels: list[dict]) -> str:
    """The phases as a table, then the replay critic's wait and the per-step figures."""
    phases = update_phases(kernels)
    lines = [f"{'phase':<36} {'start ms':>9} {'end ms':>8} {'ms':>7}"]
    for name, (start, end) in sorted(phases.items(), key=lambda item: item[1]):
        lines.append(f"{name:<36} {start:9.2f} {end:8.2f} {end - start:7.2f}")
    wait = phases["filter backward"][0] - phases["replay critic"][1]
    lines.append(f"filter backward starts {wait:.2f} ms after the replay critic ends")
    filter_steps = _main_run(_loop_streams(kernels, "_gru_backward_kernel")[0])
    backward = phases["filter backward"]
    per_step = (backward[1] - backward[0]) * 1e3 / len(filter_steps)
    lines.append(f"filter backward: {len(filter_steps)} steps, {per_step:.1f} us each")
    return "\n".join(lines)


def phase_kernels(kernels: list[dict], top: int) -> str:
    """Each phase's kernels (those starting inside it; phases on two streams overlap) per stream:
    count, summed time and the ``top`` names by summed time."""
    origin = kernels[0]["start_us"]
    lines = []
    for name, (start, end) in sorted(update_phases(kernels).items(), key=lambda item: item[1]):
        lines.append(f"{name} ({start:.2f}-{end:.2f} ms):")
        by_stream: dict = defaultdict(list)
        for kernel in kernels:
            if start <= (kernel["start_us"] - origin) / 1e3 < end:
                by_stream[kernel["stream"]].append(kernel)
        for stream, launched in sorted(by_stream.items(), key=lambda item: str(item[0])):
            total = sum(k["us"] for k in launched)
            lines.append(f"  stream {stream}: {len(launched)} kernels, {total:.1f} us")
            times, counts = Counter(), Counter()
            for kernel in launched:
                times[kernel["name"]] += kernel["us"]
                counts[kernel["name"]] += 1
            for kernel_name, time in times.most_common(top):
                lines.append(f"    {time:8.1f} us {counts[kernel_name]:4d}x  {kernel_name[:100]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="bench_learner.py --trace output (.json/.gz)")
    parser.add_argument(
        "--kernels", type=int, default=0, metavar="N", help="list each phase's N longest kernels"
    )
    args = parser.parse_args()
    kernels = load_trace(args.trace)
    print(report(kernels))
    if args.kernels:
        print(phase_kernels(kernels, args.kernels))


if __name__ == "__main__":
    main()
