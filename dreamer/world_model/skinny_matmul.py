"""``x @ W`` for a few rows (the filter's 16) as one Triton kernel, split over K without a second.

A filter step multiplies 16 rows by weights of up to 2048 x 2048. cuBLAS runs such a product as
a split-K GEMM and a second kernel that adds the splits (or as a GEMV-like kernel on few SMs):
5.5-9 µs each on an H100, most of a filter step's 72 µs forward (docs/benchmarks.md); this
kernel took 3.8-5.0 µs for the same products there (8.3 µs for 1,536 -> 2,048). Here the
products of one output tile over all K chunks run as programs of one kernel: each writes its
partial tile, counts itself in on the tile's counter, and the program that comes last adds the
partials, adds the bias and writes the result, then resets the counter for the next call. The
weight is read once, spread over ~128 programs. :func:`skinny_bmm` does the same for every block
of a block-linear layer at once (the block GRU's layers), with any strides.

Counters live in one small buffer per CUDA stream, so the two branches of the learner
(:mod:`dreamer.training.concurrent_loss`) never share one; kernels on one stream run in order.
The partial sums are added in a fixed order, so results do not depend on scheduling.
"""

from __future__ import annotations

import os

import torch

from dreamer.world_model.fused_ops import triton, use_fused

if triton is not None:
    import triton.language as tl

# Rows at most. Measured at the filter's 16 only; the imagination's 1,024 keep cuBLAS.
MAX_ROWS = 64
BLOCK_N = 32
BLOCK_K = 64
# Programs aimed at per call (the H100 has 132 SMs); twice as many for outputs of at least
# WIDE columns (``bench/bench_skinny.py``, H100: 5.8 vs 6.6 µs for 1,536 -> 2,048 forward and
# 6.4 vs 7.9 µs for its input gradient, 4.5 vs 4.2 µs for 2,048 -> 512's; the learner 0.3 ms
# faster an update).
TARGET_PROGRAMS = 128
WIDE = 1536
MAX_TILES = 4096

_counters: dict[tuple[torch.device, int], torch.Tensor] = {}


def use_skinny(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`skinny_matmul` (2-D ``x``) or :func:`skinny_bmm` (3-D, a block-linear
    layer's blocks) should run ``x @ weight``: a float32 ``x`` of at most :data:`MAX_ROWS` rows
    where the Triton kernels run (:func:`use_fused`).

    Not in bf16, where cuBLAS's kernels for these shapes are as fast (3.0-5.2 µs,
    ``bench/bench_skinny.py``) and the learner measured slower with this one: 18.39 vs
    17.84-17.89 ms an update at 16x64 on an H100 with bf16 products, 18.5 vs 17.9 with float32
    ones (docs/benchmarks.md)."""
    return (
        x.dim() in (2, 3)
        and x.shape[-2] <= MAX_ROWS
        and x.dtype == torch.float32
        and use_fused(x, weight)
    )


def _tile_counters(device: torch.device) -> torch.Tensor:
    """This stream's tile counters (all zero between calls)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    if key not in _counters:
        _counters[key] = torch.zeros(MAX_TILES, dtype=torch.int32, device=device)
    return _counters[key]


def _splits(tiles: int, k: int, block_k: int, programs: int) -> int:
    """K chunks per output tile: enough programs to spread the weight over the GPU, each chunk
    a whole number of ``block_k`` steps."""
    steps = triton.cdiv(k, block_k)
    wanted = max(1, min(programs // tiles, steps))
    return triton.cdiv(steps, triton.cdiv(steps, wanted))


def skinny_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    **launch,
) -> torch.Tensor:
    """``x @ weight (+ bias)`` for ``x`` ``[M, K]`` (M <= :data:`MAX_ROWS`) and ``weight``
    ``[K, N]`` with any strides (a linear layer's weight ``W`` is passed as ``W.t()``): one
    batch of :func:`skinny_bmm`."""
    bias = None if bias is None else bias.unsqueeze(0)
    return skinny_bmm(x.unsqueeze(0), weight.unsqueeze(0), bias, **launch)[0]


def skinny_bmm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    block_n: int = BLOCK_N,
    block_k: int = BLOCK_K,
    programs: int | None = None,
    warps: int = 4,
) -> torch.Tensor:
    """``x[b] @ weight[b] (+ bias[b])`` for ``x`` ``[B, M, K]`` (M <= :data:`MAX_ROWS`),
    ``weight`` ``[B, K, N]`` and ``bias`` ``[B, N]``, any strides, into ``out`` ``[B, M, N]``
    (any strides; made contiguous when not given), in ``x``'s dtype, accumulated in float32.
    TF32 as torch's matmul setting says; bf16 operands multiply in bf16 (float32 in Triton's
    interpreter, which has no bf16 product).

    The keywords set the launch (``bench/bench_skinny.py`` compares them); the defaults are
    what the learner uses.
    """
    batch, rows, k = x.shape
    n = weight.shape[2]
    if programs is None:
        programs = 2 * TARGET_PROGRAMS if n >= WIDE else TARGET_PROGRAMS
    if out is None:
        out = torch.empty(batch, rows, n, dtype=x.dtype, device=x.device)
    block_m = max(16, triton.next_power_of_2(rows))
    tiles = triton.cdiv(n, block_n)
    if batch * tiles > MAX_TILES:
        raise ValueError(f"skinny_bmm supports at most {MAX_TILES} output tiles of {block_n}")
    splits = _splits(batch * tiles, k, block_k, programs)
    k_per_split = triton.cdiv(triton.cdiv(k, block_k), splits) * block_k
    partials = x.new_empty(batch * tiles * splits * block_m * block_n, dtype=torch.float32)
    tf32 = x.is_cuda and torch.backends.cuda.matmul.allow_tf32
    upcast = x.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    bias_strides = (0, 0) if bias is None else bias.stride()
    _skinny_matmul[(tiles, splits, batch)](
        x, weight, x if bias is None else bias, out, partials, _tile_counters(x.device),
        rows, n, k, *x.stride(), *weight.stride(), *bias_strides, *out.stride(),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        SPLITS=splits, K_PER_SPLIT=k_per_split, UPCAST=upcast,
        PRECISION="tf32" if tf32 else "ieee", num_warps=warps,
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _skinny_matmul(
        x_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        partial_ptr,
        counter_ptr,
        rows,
        n,
        k,
        x_batch_stride,
        x_row_stride,
        x_k_stride,
        w_batch_stride,
        w_k_stride,
        w_n_stride,
        b_batch_stride,
        b_n_stride,
        out_batch_stride,
        out_row_stride,
        out_n_stride,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        SPLITS: tl.constexpr,
        K_PER_SPLIT: tl.constexpr,
        UPCAST: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        tile = tl.program_id(0)
        split = tl.program_id(1)
        batch = tl.program_id(2)
        x_ptr += batch * x_batch_stride
        w_ptr += batch * w_batch_stride
        b_ptr += batch * b_batch_stride
        out_ptr += batch * out_batch_stride
        row = tl.arange(0, BLOCK_M)[:, None]
        col = tile * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for step in range(0, K_PER_SPLIT, BLOCK_K):
            ks = split * K_PER_SPLIT + step + tl.arange(0, BLOCK_K)
            a = tl.load(
                x_ptr + row * x_row_stride + ks[None, :] * x_k_stride,
                mask=(row < rows) & (ks[None, :] < k),
                other=0.0,
            )
            b = tl.load(
                w_ptr + ks[:, None] * w_k_stride + col * w_n_stride,
                mask=(ks[:, None] < k) & (col < n),
                other=0.0,
            )
            if UPCAST:  # float32 (TF32 or IEEE); bf16 in the interpreter: exact in float32
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
            else:
                acc += tl.dot(a, b.to(a.dtype))
        out_ptrs = out_ptr + row * out_row_stride + col * out_n_stride
        if SPLITS == 1:
            _finish(acc, b_ptr, b_n_stride, out_ptrs, row, col, rows, n, HAS_BIAS)
        else:
            local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            counter = batch * tl.num_programs(0) + tile
            tile_partials = partial_ptr + counter * SPLITS * BLOCK_M * BLOCK_N
            tl.store(tile_partials + split * BLOCK_M * BLOCK_N + local, acc)
            # Every thread's partial is stored before the count (acq_rel) announces it.
            tl.debug_barrier()
            arrived = tl.atomic_add(counter_ptr + counter, 1, sem="acq_rel")
            if arrived == SPLITS - 1:  # the last program of this tile adds every split in order
                total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                for other in range(SPLITS):
                    total += tl.load(
                        tile_partials + other * BLOCK_M * BLOCK_N + local, cache_modifier=".cg"
                    )
                tl.atomic_xchg(counter_ptr + counter, 0)
                _finish(total, b_ptr, b_n_stride, out_ptrs, row, col, rows, n, HAS_BIAS)

    @triton.jit
    def _finish(total, b_ptr, b_n_stride, out_ptrs, row, col, rows, n, HAS_BIAS: tl.constexpr):
        """The bias added and the tile stored in the output's dtype."""
        if HAS_BIAS:
            total += tl.load(b_ptr + col * b_n_stride, mask=col < n, other=0.0).to(tl.float32)
        out_dtype = out_ptrs.dtype.element_ty
        tl.store(out_ptrs, total.to(out_dtype), mask=(row < rows) & (col < n))
