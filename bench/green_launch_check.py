"""Which kernels launch on a CUDA green-context stream, and with which SM-split flags?

Each check runs in a subprocess of its own (a failed launch can leave the CUDA context
unusable): one kind of kernel -- a float32, TF32 or bf16 matmul through cuBLAS or cuBLASLt, a
matmul with a bias epilogue, a Triton kernel -- launched eagerly and then replayed from a
captured graph on a stream made by torch's ``GreenContext`` or by
:func:`green_streams.split_streams` with given flags. Prints one line per check: ``ok`` with the
time, or the error. Usage::

    python bench/green_launch_check.py --sms 100 --json launch.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELS = ("mm_fp32", "mm_tf32_lt", "addmm_tf32_lt", "mm_bf16_lt", "mm_bf16_cublas", "triton")
MAKERS = ("torch", "driver_flags0", "driver_maxcluster", "driver_rest")


def run_one(maker: str, kernel: str, sms: int) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    from green_streams import MAX_POTENTIAL_CLUSTER_SIZE, split_streams

    torch.backends.cuda.matmul.allow_tf32 = "tf32" in kernel
    torch.backends.cuda.preferred_blas_library("cublaslt" if "_lt" in kernel else "cublas")
    if maker == "torch":
        from torch.cuda.green_contexts import GreenContext

        stream = GreenContext.create(num_sms=sms, device_id=0).Stream()
        info = {}
    else:
        flags = 0 if maker == "driver_flags0" else MAX_POTENTIAL_CLUSTER_SIZE
        group, rest, info = split_streams(sms, flags)
        stream = rest if maker == "driver_rest" else group
    dtype = torch.bfloat16 if "bf16" in kernel else torch.float32
    a = torch.randn(1024, 2048, device="cuda", dtype=dtype)
    b = torch.randn(2048, 2048, device="cuda", dtype=dtype)
    bias = torch.randn(2048, device="cuda", dtype=dtype)
    if kernel == "triton":
        import triton
        import triton.language as tl

        @triton.jit
        def double(x, out, n, BLOCK: tl.constexpr):
            offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offsets < n
            tl.store(out + offsets, 2 * tl.load(x + offsets, mask=mask), mask=mask)

        out = torch.empty_like(a)

        def work():
            double[(triton.cdiv(a.numel(), 1024),)](a, out, a.numel(), BLOCK=1024)
    elif kernel.startswith("addmm"):

        def work():
            return torch.addmm(bias, a, b)
    else:

        def work():
            return a @ b

    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        work()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        work()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.stream(stream):
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
    end.synchronize()
    print(json.dumps({"ok": True, "us": start.elapsed_time(end) * 50, "info": info}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sms", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("MAKER", "KERNEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(*args.one, args.sms)
        return

    def check(pair):
        command = [sys.executable, __file__, "--sms", str(args.sms), "--one", *pair]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines:
            return pair, json.loads(lines[-1])
        error = [line for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        return pair, {"ok": False, "error": (error or done.stderr.splitlines() or ["?"])[-1]}

    pairs = [(maker, kernel) for maker in MAKERS for kernel in KERNELS]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(check, pairs))
    rows = []
    for (maker, kernel), result in results:
        status = f"ok {result['us']:.1f} us" if result["ok"] else f"FAILED {result['error']}"
        print(f"{maker:18s} {kernel:16s} {status}  {result.get('info', '')}")
        rows.append({"maker": maker, "kernel": kernel, "sms": args.sms, **result})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
