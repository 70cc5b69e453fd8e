"""Does a CUDA green context's SM limit hold for kernels replayed from a captured CUDA graph?

Times one compute-bound matmul on an ordinary stream and on a green-context stream of
``--sms`` SMs (torch's beta ``torch.cuda.green_contexts``), each eagerly and as a captured
graph. If the limit holds, the green-context times are about ``SMs on the device / --sms`` times
the ordinary ones in both modes. Prints a table and (with ``--json``) writes the figures. It
answers the question docs/benchmarks.md asks about keeping SMs free for the filter's backward
("Green contexts"). Usage::

    python bench/green_context_probe.py --sms 16 --json green.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def time_on(stream: torch.cuda.Stream, work, repeats: int = 20) -> float:
    """Median milliseconds of ``work()`` queued on ``stream``."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(stream):
            start.record()
            work()
            end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sms", type=int, default=16)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    a = torch.randn(args.size, args.size, device=device)
    b = torch.randn(args.size, args.size, device=device)
    out = torch.empty_like(a)

    def matmul():
        torch.mm(a, b, out=out)

    plain = torch.cuda.Stream(device)
    from torch.cuda.green_contexts import GreenContext

    context = GreenContext.create(num_sms=args.sms, device_id=torch.cuda.current_device())
    green = context.Stream()
    rows = {}
    for name, stream in (("plain", plain), ("green", green)):
        with torch.cuda.stream(stream):
            matmul()  # cuBLAS handle and workspace for this stream before capture
        torch.cuda.synchronize()
        rows[f"{name}_eager_ms"] = time_on(stream, matmul)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            matmul()
        rows[f"{name}_graph_ms"] = time_on(stream, graph.replay)
    total = torch.cuda.get_device_properties(device).multi_processor_count
    rows.update(device_sms=total, green_sms=args.sms, torch=torch.__version__)
    rows["eager_ratio"] = rows["green_eager_ms"] / rows["plain_eager_ms"]
    rows["graph_ratio"] = rows["green_graph_ms"] / rows["plain_graph_ms"]
    for key, value in rows.items():
        print(f"{key:16s} {value:.3f}" if isinstance(value, float) else f"{key:16s} {value}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
