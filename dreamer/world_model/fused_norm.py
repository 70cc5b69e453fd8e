"""RMS norm followed by SiLU as one Triton kernel forward and one backward.

Every layer inside the RSSM's step is ``Linear -> RMSNorm -> SiLU``. PyTorch runs the norm and
the activation as two kernels forward and, backward, SiLU's gradient, the norm's input gradient,
a reduction for the norm's scale and an add that accumulates that scale's gradient over the loop's
steps: four small kernels per layer per step. Here the forward pass is one kernel (one program per
row) and the backward pass one kernel that writes the input gradient and atomically adds each
tile of rows' contribution to the scale's gradient into a float32 buffer. With
:class:`~dreamer.world_model.deferred_grads.DeferredLayers` that buffer is shared by all steps of
the loop, so the scale's gradient costs no kernel per step at all. (Atomic float adds make the
scale's gradient independent of nothing but the order of additions: its last bits may differ
between runs.)

The maths is TorchRL's DreamerV3 norm, ``x * rsqrt(mean(x^2) + eps) * weight``, computed in
float32 and stored in the input's dtype, then SiLU. Only ``triton.language`` features present
since Triton 3.0 are used (the H100 runs PyTorch 2.11's bundled Triton; CI runs Triton 3.9's
interpreter on the CPU: ``tests/test_fused_norm.py``).
"""

from __future__ import annotations

import torch

from dreamer.world_model.filled_buffers import alias
from dreamer.world_model.fused_ops import use_fused

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without triton: the torch modules are used
    triton = None


if triton is not None:

    @triton.jit
    def _norm_silu_forward(x_ptr, a_ptr, w_ptr, y_ptr, sum_ptr, rstd_ptr, width, eps, a_rows,
                           a_blocks, a_cols, a_group, y_stride, ADDEND: tl.constexpr,
                           BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
        if ADDEND:  # x + addend, the addend read through its strides ([rows, blocks, group])
            offset = row * a_rows + (cols // a_group) * a_blocks + (cols % a_group) * a_cols
            x += tl.load(a_ptr + offset, mask=mask, other=0.0).to(tl.float32)
            # the sum, rounded as an unfused add would round it, is what the backward reads
            x = x.to(sum_ptr.dtype.element_ty)
            tl.store(sum_ptr + row * width + cols, x, mask=mask)
            x = x.to(tl.float32)
        _norm_silu_row(x, w_ptr, y_ptr, rstd_ptr, row, cols, mask, width, eps, y_stride)

    @triton.jit
    def _norm_silu_row(x, w_ptr, y_ptr, rstd_ptr, row, cols, mask, width, eps, y_stride):
        """One row's norm and SiLU from its float32 values ``x``: the output and the row's rstd."""
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
        s = x * rstd * w
        y = s / (1.0 + tl.exp(-s))
        tl.store(y_ptr + row * y_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def _norm_silu_pair_forward(x1, w1, y1, rstd1, width1, eps1, y1_stride, x2, w2, y2, rstd2,
                                width2, eps2, y2_stride, BLOCK: tl.constexpr):  # fmt: skip
        """Two norms of the same rows in one launch: program ``(row, 0)`` the first's, ``(row,
        1)`` the second's."""
        row = tl.program_id(0)
        if tl.program_id(1) == 0:
            x_ptr, w_ptr, y_ptr, rstd_ptr, width, eps, y_stride = (
                x1, w1, y1, rstd1, width1, eps1, y1_stride
            )  # fmt: skip
        else:
            x_ptr, w_ptr, y_ptr, rstd_ptr, width, eps, y_stride = (
                x2, w2, y2, rstd2, width2, eps2, y2_stride
            )  # fmt: skip
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
        _norm_silu_row(x, w_ptr, y_ptr, rstd_ptr, row, cols, mask, width, eps, y_stride)

    @triton.jit
    def _norm_silu_backward(
        x_ptr,
        w_ptr,
        rstd_ptr,
        gy_ptr,
        gx_ptr,
        gw_ptr,
        rows,
        width,
        gy_stride,
        ROWS_PER_PROGRAM: tl.constexpr,
        BLOCK: tl.constexpr,
        WEIGHT_GRAD: tl.constexpr,
    ):
        _norm_silu_rows_backward(
            x_ptr, w_ptr, rstd_ptr, gy_ptr, gx_ptr, gw_ptr, rows, width, gy_stride, WEIGHT_GRAD,
            ROWS_PER_PROGRAM, BLOCK,
        )  # fmt: skip

    @triton.jit
    def _norm_silu_rows_backward(x_ptr, w_ptr, rstd_ptr, gy_ptr, gx_ptr, gw_ptr, rows, width,
                                 gy_stride, WEIGHT_GRAD: tl.constexpr,
                                 ROWS_PER_PROGRAM: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """This program's tile of rows: the input gradient, and with ``WEIGHT_GRAD`` its
        contribution to the scale's gradient added atomically."""
        # Each program takes a tile of rows, loaded at once (a loop over them waited on memory
        # once per row: 7-12 µs for 1,024 rows), and adds its scale gradient once: few atomic
        # adds per address however many rows there are.
        row = tl.program_id(0) * ROWS_PER_PROGRAM + tl.arange(0, ROWS_PER_PROGRAM)[:, None]
        cols = tl.arange(0, BLOCK)[None, :]
        mask = (cols < width) & (row < rows)
        w = tl.load(w_ptr + cols, mask=cols < width, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + row * gy_stride + cols, mask=mask, other=0.0).to(tl.float32)
        # (rows past the end read nothing: their zero gradient adds nothing)
        rstd = tl.load(rstd_ptr + row, mask=row < rows, other=0.0)
        normed = x * rstd
        s = normed * w
        sig = 1.0 / (1.0 + tl.exp(-s))
        gs = gy * sig * (1.0 + s * (1.0 - sig))
        gn = gs * w
        # d/dx of x * rstd(x): rstd * (gn - normed * mean(gn * normed))
        gx = rstd * (gn - normed * (tl.sum(gn * normed, axis=1)[:, None] / width))
        tl.store(gx_ptr + row * width + cols, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if WEIGHT_GRAD:  # a scale held out of the graph (TorchRL's actor loss) needs none
            grad_w = tl.sum(gs * normed, axis=0)
            cols = tl.arange(0, BLOCK)
            tl.atomic_add(gw_ptr + cols, grad_w, mask=cols < width)

    @triton.jit
    def _norm_silu_pair_backward(x1, w1, rstd1, gy1, gx1, gw1, width1, gy1_stride, x2, w2,
                                 rstd2, gy2, gx2, gw2, width2, gy2_stride, rows,
                                 WEIGHT_GRAD: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr,
                                 BLOCK: tl.constexpr):  # fmt: skip
        """:func:`_norm_silu_pair_forward`'s backward: programs ``(tile, 0)`` the first norm's,
        ``(tile, 1)`` the second's."""
        if tl.program_id(1) == 0:
            x_ptr, w_ptr, rstd_ptr, gy_ptr, gx_ptr, gw_ptr, width, gy_stride = (
                x1, w1, rstd1, gy1, gx1, gw1, width1, gy1_stride
            )  # fmt: skip
        else:
            x_ptr, w_ptr, rstd_ptr, gy_ptr, gx_ptr, gw_ptr, width, gy_stride = (
                x2, w2, rstd2, gy2, gx2, gw2, width2, gy2_stride
            )  # fmt: skip
        _norm_silu_rows_backward(
            x_ptr, w_ptr, rstd_ptr, gy_ptr, gx_ptr, gw_ptr, rows, width, gy_stride, WEIGHT_GRAD,
            ROWS_PER_PROGRAM, BLOCK,
        )  # fmt: skip


# Backward programs per call aimed at: enough to fill the GPU, few enough that the atomic adds
# of the scale's gradient do not queue on the same addresses (more where a tile would exceed
# TILE elements).
BACKWARD_PROGRAMS = 128
# Elements of a backward program's tile at most (8 rows of 512, the imagination's calls).
TILE = 4096
# Above this many rows a call is no longer launch-bound and torch's own kernels are as fast.
MAX_FUSED_ROWS = 4096


def _launch_config(width: int) -> tuple[int, int]:
    block = triton.next_power_of_2(width)
    return block, 8 if block >= 2048 else 4


def _backward_launch(count: int, width: int) -> tuple[int, int, int]:
    """A backward launch over ``count`` rows ``width`` wide: block, rows a program takes and
    warps. The rows a program takes are a power of two (a tile's height), at most TILE elements;
    a run sees a few values (one per row count and width), each compiled once."""
    block, warps = _launch_config(width)
    per_program = triton.next_power_of_2(triton.cdiv(count, min(count, BACKWARD_PROGRAMS)))
    per_program = max(1, min(per_program, TILE // block))
    if per_program * block >= TILE:  # a full tile: as many warps as a 2,048-wide row gets
        warps = 8
    return block, per_program, warps


class _NormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float, weight_grad: torch.Tensor | None, addend, out):
        width = x.shape[-1]
        rows = x.reshape(-1, width).contiguous()
        # Rows of a given output are written at its row stride (columns of a wider buffer).
        y = torch.empty_like(rows) if out is None else out.view(-1, width)
        rstd = torch.empty(rows.shape[0], device=x.device, dtype=torch.float32)
        block, warps = _launch_config(width)
        summed = rows
        strides = (0, 0, 0, width)
        if addend is not None:
            summed = torch.empty_like(rows)
            strides = (*addend.stride(), addend.shape[-1])
        _norm_silu_forward[(rows.shape[0],)](
            rows, rows if addend is None else addend, weight, y, summed, rstd, width, eps,
            *strides, y.stride(0), ADDEND=addend is not None, BLOCK=block, num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(summed, weight, rstd)
        ctx.weight_grad = weight_grad
        ctx.shape = x.shape
        ctx.addend_shape = None if addend is None else addend.shape
        return y.view(x.shape) if out is None else alias(out)

    @staticmethod
    def backward(ctx, grad):
        rows, weight, rstd = ctx.saved_tensors
        width = rows.shape[-1]
        # The gradient often arrives as a column slice of a wider one (the norm's output is
        # concatenated with others): its rows are read with their stride instead of copied.
        grad = grad.reshape(-1, width)
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        grad_x = torch.empty_like(rows)
        shared = ctx.weight_grad is not None
        wanted = shared or ctx.needs_input_grad[1]
        grad_w = ctx.weight_grad if shared else None
        if grad_w is None:
            grad_w = torch.zeros(width, device=rows.device) if wanted else grad_x
        count = rows.shape[0]
        block, per_program, warps = _backward_launch(count, width)
        _norm_silu_backward[(triton.cdiv(count, per_program),)](
            rows,
            weight,
            rstd,
            grad,
            grad_x,
            grad_w,
            count,
            width,
            grad.stride(0),
            ROWS_PER_PROGRAM=per_program,
            BLOCK=block,
            WEIGHT_GRAD=wanted,
            num_warps=warps,
        )
        # With a shared buffer the scale's gradient is handed over once, by its owner.
        weight_grad = grad_w.to(weight.dtype) if wanted and not shared else None
        grad_addend = None
        if ctx.needs_input_grad[4]:  # the sum's gradient, in the addend's [rows, blocks, group]
            grad_addend = grad_x.view(ctx.addend_shape)
        return grad_x.view(ctx.shape), weight_grad, None, None, grad_addend, None


def rms_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    weight_grad: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``silu(x * rsqrt(mean(x^2, -1) + eps) * weight)`` in one Triton kernel each way.

    Args:
        x: ``[..., D]`` (float32 or bf16).
        weight: the norm's scale ``[D]``.
        eps: the norm's epsilon.
        weight_grad: a float32 ``[D]`` buffer the backward pass adds the scale's gradient to,
            instead of returning it (one buffer for all steps of a loop, handed to autograd by
            its owner); ``None``: returned as the gradient of ``weight`` as usual.
        addend: added to ``x`` first, inside the kernel (an add would be one more kernel each
            step): ``x``'s shape, or ``[rows, blocks, D / blocks]`` with any strides for ``x``
            ``[rows, D]`` (the block-major output of a block-linear layer, transposed).
        out: where to write the result: ``x``'s shape and dtype, its rows at one stride with
            unit column stride (e.g. columns of a wider buffer that a concatenation would have
            made), returned as a tensor with gradients (:func:`~dreamer.world_model.filled_buffers.alias`).
    """
    if triton is None:
        raise RuntimeError("rms_norm_silu needs triton (pip install triton)")
    if addend is not None:
        rows = x.shape[:-1].numel()
        if addend.dtype != x.dtype:
            raise ValueError(f"addend dtype {addend.dtype} differs from x's {x.dtype}")
        if addend.shape == x.shape:
            addend = addend.reshape(rows, 1, x.shape[-1])
        if addend.dim() != 3 or addend.shape[0] != rows or addend[0].numel() != x.shape[-1]:
            raise ValueError(f"addend {tuple(addend.shape)} does not fit x {tuple(x.shape)}")
    if out is not None and not _rows_at_one_stride(out, x):
        raise ValueError(f"out {tuple(out.shape)} {out.stride()} does not fit x {tuple(x.shape)}")
    return _NormSiLU.apply(x, weight, eps, weight_grad, addend, out)


class _NormSiLUPair(torch.autograd.Function):
    """Two :class:`_NormSiLU` of the same rows (no addend), one kernel each way."""

    @staticmethod
    def forward(ctx, x1, x2, w1, w2, eps1: float, eps2: float, buffers, out1, out2):
        rows1, rows2 = (x.reshape(-1, x.shape[-1]).contiguous() for x in (x1, x2))
        count = rows1.shape[0]
        y1, y2 = (out.view(count, -1) for out in (out1, out2))
        rstd = torch.empty(2, count, device=x1.device, dtype=torch.float32)
        block, warps = _launch_config(max(rows1.shape[1], rows2.shape[1]))
        _norm_silu_pair_forward[(count, 2)](
            rows1, w1, y1, rstd[0], rows1.shape[1], eps1, y1.stride(0),
            rows2, w2, y2, rstd[1], rows2.shape[1], eps2, y2.stride(0),
            BLOCK=block, num_warps=warps,
        )  # fmt: skip
        ctx.save_for_backward(rows1, rows2, w1, w2, rstd)
        ctx.buffers = buffers
        ctx.shapes = x1.shape, x2.shape
        return alias(out1), alias(out2)

    @staticmethod
    def backward(ctx, grad1, grad2):
        rows1, rows2, w1, w2, rstd = ctx.saved_tensors
        count = rows1.shape[0]
        grads = []
        for grad, rows in ((grad1, rows1), (grad2, rows2)):
            grad = grad.reshape(count, rows.shape[1])
            grads.append(grad if grad.stride(-1) == 1 else grad.contiguous())
        grad_x1, grad_x2 = torch.empty_like(rows1), torch.empty_like(rows2)
        shared = ctx.buffers is not None
        wanted = shared or ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        if shared:
            grad_w1, grad_w2 = ctx.buffers
        elif wanted:
            grad_w1, grad_w2 = (torch.zeros(w.shape, device=w.device) for w in (w1, w2))
        else:
            grad_w1, grad_w2 = grad_x1, grad_x2  # stand-ins, never written
        block, per_program, warps = _backward_launch(count, max(rows1.shape[1], rows2.shape[1]))
        _norm_silu_pair_backward[(triton.cdiv(count, per_program), 2)](
            rows1, w1, rstd[0], grads[0], grad_x1, grad_w1, rows1.shape[1], grads[0].stride(0),
            rows2, w2, rstd[1], grads[1], grad_x2, grad_w2, rows2.shape[1], grads[1].stride(0),
            count, WEIGHT_GRAD=wanted, ROWS_PER_PROGRAM=per_program, BLOCK=block,
            num_warps=warps,
        )  # fmt: skip
        weight_grads = [None, None]
        if wanted and not shared:
            weight_grads = [grad_w1.to(w1.dtype), grad_w2.to(w2.dtype)]
        shape1, shape2 = ctx.shapes
        return (
            grad_x1.view(shape1), grad_x2.view(shape2), *weight_grads,
            None, None, None, None, None,
        )  # fmt: skip


def rms_norm_silu_pair(
    x1: torch.Tensor,
    weight1: torch.Tensor,
    eps1: float,
    out1: torch.Tensor,
    x2: torch.Tensor,
    weight2: torch.Tensor,
    eps2: float,
    out2: torch.Tensor,
    weight_grads: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_silu` of two inputs over the same rows (``x1`` ``[..., D1]``, ``x2``
    ``[..., D2]``) into ``out1`` and ``out2``, in one kernel each way instead of two.

    Why: the block GRU's belief and state projections each end in a norm and SiLU and write
    adjacent columns of its features (:mod:`dreamer.world_model.gru_features`); at every step of
    the filter and the dream the two norms were two kernels of the step's chain, forward and
    backward. ``weight_grads``: two float32 buffers the backward adds the scales' gradients to
    (as :func:`rms_norm_silu`'s ``weight_grad``; both or neither). ``out1``/``out2`` as
    :func:`rms_norm_silu`'s ``out`` (required here).
    """
    if triton is None:
        raise RuntimeError("rms_norm_silu_pair needs triton (pip install triton)")
    if x1.shape[:-1] != x2.shape[:-1]:
        raise ValueError(f"the inputs' rows differ: {tuple(x1.shape)} and {tuple(x2.shape)}")
    for x, out in ((x1, out1), (x2, out2)):
        if not _rows_at_one_stride(out, x):
            raise ValueError(f"out {tuple(out.shape)} {out.stride()} does not fit {tuple(x.shape)}")
    return _NormSiLUPair.apply(x1, x2, weight1, weight2, eps1, eps2, weight_grads, out1, out2)


def _rows_at_one_stride(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``out`` can take :func:`rms_norm_silu`'s result for ``x``: same shape and dtype,
    unit column stride, rows (all leading dims) at one stride."""
    if out.shape != x.shape or out.dtype != x.dtype or out.stride(-1) != 1:
        return False
    try:
        out.view(-1, x.shape[-1])
    except RuntimeError:
        return False
    return True


def fused_norm_available(x: torch.Tensor) -> bool:
    """Whether the RSSM uses :func:`rms_norm_silu` for ``x``: where the other fused kernels run
    (:func:`~dreamer.world_model.fused_ops.use_fused`, ``learner.fused_kernels``), for at most
    :data:`MAX_FUSED_ROWS` rows."""
    return use_fused(x) and x.shape[:-1].numel() <= MAX_FUSED_ROWS
