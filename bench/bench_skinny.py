"""Time the few-rows matmul kernel against cuBLAS on the filter's products, per launch setting.

``python bench/bench_skinny.py [--rows 16] [--json FILE]`` (CUDA only) prints, for each product
a filter step runs (forward ``x @ W.t()`` and the input gradient ``g @ W``) in float32 and bf16,
the microseconds per call of torch's matmul and of :func:`~dreamer.world_model.skinny_matmul.
skinny_matmul` under several launch settings (tile width, programs aimed at, warps, K step).
Each figure is the mean over a CUDA graph of back-to-back calls, replayed, so launch cost is
that of a graph, as in the learner.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamer.world_model.skinny_matmul import skinny_matmul  # noqa: E402

# (name, K, N): forward products x[rows, K] @ W[N, K].t(); backward ones g[rows, N] @ W[N, K]
PRODUCTS = [
    ("posterior / belief projection 2048->512", 2048, 512),
    ("state projection, posterior head 512->512", 512, 512),
    ("shared hidden 1536->2048", 1536, 2048),
]
SETTINGS = [
    {"block_n": 32, "programs": None, "warps": 4, "block_k": 64},  # the default (128 or 256)
    {"block_n": 32, "programs": 128, "warps": 4, "block_k": 64},
    {"block_n": 16, "programs": 128, "warps": 4, "block_k": 64},
    {"block_n": 64, "programs": 128, "warps": 4, "block_k": 64},
    {"block_n": 32, "programs": 64, "warps": 4, "block_k": 64},
    {"block_n": 32, "programs": 256, "warps": 4, "block_k": 64},
    {"block_n": 16, "programs": 256, "warps": 4, "block_k": 64},
    {"block_n": 32, "programs": 128, "warps": 2, "block_k": 64},
    {"block_n": 32, "programs": 128, "warps": 4, "block_k": 128},
    {"block_n": 64, "programs": 64, "warps": 4, "block_k": 128},
]


def time_per_call(fn, calls: int = 50, replays: int = 20) -> float:
    """Microseconds per call of ``fn`` captured ``calls`` times in one graph."""
    for _ in range(3):
        fn()  # compile, and the per-stream counters made outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (calls * replays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_skinny.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True  # as the learner runs (learner.tf32)
    rows, results = args.rows, []
    print(f"{'product':45s} {'dtype':5s} {'pass':8s} {'cuBLAS':>7s}  skinny per setting (µs)")
    for name, k, n in PRODUCTS:
        for dtype in (torch.float32, torch.bfloat16):
            weight = torch.randn(n, k, device="cuda", dtype=dtype)
            bias = torch.randn(n, device="cuda", dtype=dtype)
            x = torch.randn(rows, k, device="cuda", dtype=dtype)
            grad = torch.randn(rows, n, device="cuda", dtype=dtype)
            passes = {
                "forward": (partial(F.linear, x, weight, bias), (x, weight.t(), bias)),
                "backward": (partial(torch.mm, grad, weight), (grad, weight, None)),
            }
            for kind, (reference, operands) in passes.items():
                cublas = time_per_call(reference)
                timings = [time_per_call(partial(skinny_matmul, *operands, **s)) for s in SETTINGS]
                dtype_name = str(dtype).removeprefix("torch.")
                cells = " ".join(f"{t:6.2f}" for t in timings)
                print(f"{name:45s} {dtype_name:5s} {kind:8s} {cublas:7.2f}  {cells}")
                results.append(
                    {
                        "product": name,
                        "dtype": dtype_name,
                        "pass": kind,
                        "cublas_us": cublas,
                        "skinny_us": timings,
                    }  # fmt: skip
                )
    print("settings:", *(json.dumps(s) for s in SETTINGS), sep="\n  ")
    if args.json:
        meta = {"date": date.today().isoformat(), "device": torch.cuda.get_device_name(),
                "torch": torch.__version__, "rows": rows, "settings": SETTINGS}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
