"""The few-rows matmul kernel computes ``x @ W (+ b)`` as torch does, call after call.

Kernel cases run through Triton's interpreter in a subprocess (this file as a script) and
compiled on CUDA. Tolerances: float32 ``rtol=1e-4`` and ``atol=1e-4 * sqrt(K)`` (TF32 on the GPU
where torch's matmul allows it; the interpreter multiplies in float32); bf16 outputs 3e-2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import check_cases

DEVICE = "cpu"


def check_product(rows: int, k: int, n: int, bias: bool, dtype: torch.dtype) -> None:
    """The forward (``x @ W.t() + b``, a linear layer) and the input gradient's orientation
    (``g @ W``), twice each: the per-tile counters must be back at zero after every call."""
    from dreamer.world_model.skinny_matmul import skinny_matmul

    generator = torch.Generator().manual_seed(rows * k + n)
    x = torch.randn(rows, k, generator=generator).to(DEVICE, dtype)
    weight = torch.randn(n, k, generator=generator).to(DEVICE, dtype)
    b = torch.randn(n, generator=generator).to(DEVICE, dtype) if bias else None
    grad = torch.randn(rows, n, generator=generator).to(DEVICE, dtype)
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    expected = F.linear(x.float(), weight.float(), None if b is None else b.float())
    expected_grad = grad.float() @ weight.float()
    for _ in range(2):
        got = skinny_matmul(x, weight.t(), b)
        assert got.dtype == dtype and got.shape == (rows, n)
        torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance * k**0.5)
        got_grad = skinny_matmul(grad, weight)
        torch.testing.assert_close(
            got_grad.float(), expected_grad, rtol=tolerance, atol=tolerance * n**0.5
        )


def check_blocks(rows: int, blocks: int, width_in: int, width_out: int) -> None:
    """A block-linear layer as the filter runs it: block-major views of row-major inputs,
    a per-block bias, and the input gradient written back in the rows' layout."""
    from dreamer.world_model.skinny_matmul import skinny_bmm

    generator = torch.Generator().manual_seed(blocks * width_out)
    values = torch.randn(rows, blocks * width_in, generator=generator).to(DEVICE)
    x = values.unflatten(-1, (blocks, -1)).transpose(0, 1)  # [blocks, rows, in], strided
    weight = torch.randn(blocks, width_in, width_out, generator=generator).to(DEVICE)
    bias = torch.randn(blocks, width_out, generator=generator).to(DEVICE)
    grad = torch.randn(blocks, rows, width_out, generator=generator).to(DEVICE)
    tolerance = {"rtol": 1e-4, "atol": 1e-4 * width_in**0.5}
    for _ in range(2):
        got = skinny_bmm(x, weight, bias)
        torch.testing.assert_close(got, torch.baddbmm(bias[:, None], x, weight), **tolerance)
        out = grad.new_empty(rows, blocks, width_in).transpose(0, 1)
        returned = skinny_bmm(grad, weight.transpose(1, 2), out=out)
        assert returned is out
        expected = torch.bmm(grad, weight.transpose(1, 2))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * width_out**0.5)


CASES = {
    "gru_blocks_256_to_768": (check_blocks, (16, 8, 256, 768)),
    "odd_blocks": (check_blocks, (5, 3, 40, 24)),
    "filter_posterior_2048_to_512": (check_product, (16, 2048, 512, True, torch.float32)),
    "filter_state_512_to_512": (check_product, (16, 512, 512, True, torch.float32)),
    "odd_rows_and_columns": (check_product, (40, 300, 70, True, torch.float32)),
    "one_row_no_bias": (check_product, (1, 96, 33, False, torch.float32)),
    "bf16": (check_product, (16, 2048, 512, True, torch.bfloat16)),
}


@pytest.mark.parametrize("case", CASES)
def test_kernel_in_the_interpreter(case: str, interpreted: dict[str, str]):
    assert interpreted[case] == "ok", interpreted[case]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_the_kernel_on_cuda(case: str, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DEVICE", "cuda")
    check, args = CASES[case]
    check(*args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_streams_keep_their_own_counters():
    """The learner's two branches call it on two streams at once: each stream has its own
    counters, so many interleaved calls all give torch's result."""
    from dreamer.world_model.skinny_matmul import skinny_matmul

    x = torch.randn(16, 2048, device="cuda")
    weight = torch.randn(512, 2048, device="cuda")
    expected = F.linear(x, weight)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    results = []
    for _ in range(50):
        for stream in streams:
            with torch.cuda.stream(stream):
                results.append(skinny_matmul(x, weight.t()))
    torch.cuda.synchronize()
    for got in results:
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-2)


def test_it_applies_only_to_few_rows_where_the_kernels_run():
    from dreamer.world_model.skinny_matmul import MAX_ROWS, use_skinny

    weight = torch.randn(8, 8)
    assert not use_skinny(torch.randn(4, 8), weight)  # CPU tensors without the interpreter
    if torch.cuda.is_available():
        cuda_weight = weight.cuda()
        assert use_skinny(torch.randn(MAX_ROWS, 8, device="cuda"), cuda_weight)
        assert not use_skinny(torch.randn(MAX_ROWS + 1, 8, device="cuda"), cuda_weight)
        bf16 = torch.randn(4, 8, device="cuda", dtype=torch.bfloat16)
        assert not use_skinny(bf16, cuda_weight.bfloat16())  # measured slower than cuBLAS


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(check_cases(CASES)))
