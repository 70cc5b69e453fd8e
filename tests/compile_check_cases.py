"""Two kernels for ``tests/test_compile_kernels.py``: both run in Triton's interpreter, only the
first fits an H100: the second's 256 x 256 float32 product needs more shared memory than the
card's 227 KB a block (the interpreter has no such limit). Run as a script under
``TRITON_INTERPRET=1``, it launches both and prints their recorded launches."""

import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def scale_kernel(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = index < n
    tl.store(out_ptr + index, tl.load(x_ptr + index, mask=keep) * factor, mask=keep)


@triton.jit
def big_tile_kernel(a_ptr, b_ptr, out_ptr, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    tl.store(out_ptr + rows, tl.dot(tl.load(a_ptr + rows), tl.load(b_ptr + rows)))


def launch_both() -> None:
    x = torch.arange(16, dtype=torch.float32)
    out = torch.empty_like(x)
    scale_kernel[(1,)](x, out, 16, 3.0, BLOCK=16)
    a = torch.randn(256, 256)
    product = torch.empty_like(a)
    big_tile_kernel[(1,)](a, a, product, BLOCK=256)
    # the interpreter ran the second kernel without complaint
    torch.testing.assert_close(product, a @ a, rtol=1e-4, atol=1e-3)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from compile_kernels import record_launches

    print(json.dumps(record_launches(launch_both, execute=True)))
