"""The straight-through latent sample as one Triton kernel forward and one backward.

``straight_through_sample`` (softmax, uniform mix, Gumbel-max ``argmax`` and the straight-through
one-hot) is 9 ATen ops forward and 2 backward in torch, run at every step of the filter and the
imagination. Here it is one kernel each way. The backward recomputes the softmax from the logits:
the filter keeps them anyway (the KL loss reads them), and elsewhere they are the size of the
softmax output that torch's backward would have kept. :func:`fused_sample_carried` also writes the
filter's next input, ``start + sample * keep``, whose ``addcmul`` would cost two more kernels each
way per step; with ``copy_dtype`` it also writes a copy of the logits for their other reader and
the carried state in the next matmul's dtype, so autograd adds and casts no gradient.
:func:`fused_sample_into` writes the sample into a tensor per reader that the caller gives (the
dream's: :mod:`dreamer.imagination.fused_dream`).

Same rules as :mod:`dreamer.world_model.fused_ops` (float32 maths, no syncs, long-stable
``triton.language`` only; tests through Triton's interpreter in ``tests/test_fused_ops.py``).
"""

from __future__ import annotations

import torch

from dreamer.world_model.filled_buffers import alias
from dreamer.world_model.fused_ops import copy_args, triton, unit_columns

if triton is not None:
    import triton.language as tl

    from dreamer.world_model.fused_ops import add_copy_grad, store_copy

# Logits per program.
SAMPLE_ELEMENTS = 1024
# Copies of the sample one call can write besides its main output.
MAX_SAMPLE_COPIES = 3


if triton is not None:

    @triton.jit
    def _sample_tile(logits, rows, cats, classes, l_s0, l_s1, l_s2, BLOCK_R: tl.constexpr,
                     BLOCK_K: tl.constexpr):  # fmt: skip
        """This program's rows of ``[M, C, K]`` logits as float32 ``softmax`` probabilities
        (padding classes 0), with the tile's flat row indices, class indices and masks."""
        row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        k = tl.arange(0, BLOCK_K)
        k_mask = k < classes
        mask = (row < rows)[:, None] & k_mask[None, :]
        offset = (row // cats) * l_s0 + (row % cats) * l_s1
        x = tl.load(logits + offset[:, None] + k[None, :] * l_s2, mask=mask, other=0.0)
        x = tl.where(k_mask[None, :], x.to(tl.float32), float("-inf"))
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        return e / tl.sum(e, axis=1)[:, None], row, k, k_mask, mask

    @triton.jit
    def _sample_forward_kernel(logits, noise, out, c1, c2, c3, carry_keep, carry_start, carried,
                               logits_copy, keep, floor, rows, cats, classes, l_s0, l_s1, l_s2,
                               n_s0, n_s1, n_s2, out_s0, c1_s0, c2_s0, c3_s0, ck_s0, cs_s0, cs_s1,
                               COPIES: tl.constexpr, CARRY: tl.constexpr, SPLIT: tl.constexpr,
                               BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
        probs, row, k, k_mask, mask = _sample_tile(
            logits, rows, cats, classes, l_s0, l_s1, l_s2, BLOCK_R, BLOCK_K
        )
        probs = keep * probs + floor  # the uniform mix (keep = 1 - unimix, floor = unimix / K)
        sample = row // cats
        offset = sample * n_s0 + (row % cats) * n_s1
        draw = tl.load(noise + offset[:, None] + k[None, :] * n_s2, mask=mask, other=1.0)
        # Gumbel-max in its exponential-race form; padding classes score below every real one.
        score = tl.where(k_mask[None, :], probs / draw.to(tl.float32), -1.0)
        index = tl.argmax(score, axis=1)
        one_hot = tl.where(k[None, :] == index[:, None], 1.0, 0.0)
        flat = row[:, None] * classes + k[None, :]
        # Each sample's row of C * K values, at that row's stride in the output and each copy.
        column = (row % cats)[:, None] * classes + k[None, :]
        tl.store(
            out + sample[:, None] * out_s0 + column, one_hot.to(out.dtype.element_ty), mask=mask
        )
        store_copy(c1, c1_s0, sample[:, None], column, one_hot, mask, COPIES > 0)
        store_copy(c2, c2_s0, sample[:, None], column, one_hot, mask, COPIES > 1)
        store_copy(c3, c3_s0, sample[:, None], column, one_hot, mask, COPIES > 2)
        if SPLIT:  # the logits again, for their other reader (see _StraightThroughSample)
            source = (sample * l_s0 + (row % cats) * l_s1)[:, None] + k[None, :] * l_s2
            tl.store(logits_copy + flat, tl.load(logits + source, mask=mask), mask=mask)
        if CARRY:  # the filter's next input: start + sample * keep, per sample row
            factor = tl.load(carry_keep + sample * ck_s0, mask=row < rows, other=0.0)
            start = tl.load(carry_start + sample[:, None] * cs_s0 + column * cs_s1, mask=mask)
            value = start.to(tl.float32) + one_hot * factor.to(tl.float32)[:, None]
            tl.store(carried + flat, value.to(carried.dtype.element_ty), mask=mask)

    @triton.jit
    def _sample_backward_kernel(logits, grad_out, g1, g2, g3, carry_keep, grad_carried,
                                grad_copy, grad_start, grad_logits, keep, rows, cats, classes,
                                l_s0, l_s1, l_s2, g_s0, g_s1, g_s2, g1_s0, g2_s0, g3_s0, c_s0,
                                c_s1, c_s2, ck_s0, HAS_OUT: tl.constexpr, GRADS: tl.constexpr,
                                CARRY: tl.constexpr, HAS_COPY: tl.constexpr,
                                WRITE_START: tl.constexpr, BLOCK_R: tl.constexpr,
                                BLOCK_K: tl.constexpr):  # fmt: skip
        probs, row, k, _, mask = _sample_tile(
            logits, rows, cats, classes, l_s0, l_s1, l_s2, BLOCK_R, BLOCK_K
        )
        flat = row[:, None] * classes + k[None, :]
        grad = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
        if HAS_OUT:
            # (read through its strides: the filter's samples reach the loss through a stack,
            # whose backward hands each step a slice of the stacked gradient)
            offset = ((row // cats) * g_s0 + (row % cats) * g_s1)[:, None] + k[None, :] * g_s2
            grad += tl.load(grad_out + offset, mask=mask, other=0.0).to(tl.float32)
        # The copies' gradients (GRADS: bit i set where copy i + 1 has one).
        sample, column = (row // cats)[:, None], (row % cats)[:, None] * classes + k[None, :]
        grad = add_copy_grad(grad, g1, g1_s0, sample, column, mask, GRADS % 2 == 1)
        grad = add_copy_grad(grad, g2, g2_s0, sample, column, mask, GRADS // 2 % 2 == 1)
        grad = add_copy_grad(grad, g3, g3_s0, sample, column, mask, GRADS // 4 % 2 == 1)
        if CARRY:  # the carried copy's gradient reaches the sample through keep
            factor = tl.load(carry_keep + (row // cats) * ck_s0, mask=row < rows, other=0.0)
            extra = tl.load(grad_carried + flat, mask=mask, other=0.0)
            if WRITE_START:  # the start value's gradient, in its own dtype
                tl.store(grad_start + flat, extra.to(grad_start.dtype.element_ty), mask=mask)
            grad += extra.to(tl.float32) * factor.to(tl.float32)[:, None]
        # The straight-through gradient is the mixed probabilities': keep * softmax backward.
        value = keep * probs * (grad - tl.sum(grad * probs, axis=1)[:, None])
        if HAS_COPY:  # the logits' other reader's gradient (a slice of a stack: strided)
            offset = ((row // cats) * c_s0 + (row % cats) * c_s1)[:, None] + k[None, :] * c_s2
            value += tl.load(grad_copy + offset, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_logits + flat, value.to(grad_logits.dtype.element_ty), mask=mask)


def _sample_args(logits: torch.Tensor) -> tuple[tuple, dict, tuple]:
    """Grid, block sizes and leading sizes of the sample kernels for ``[M, C, K]`` logits."""
    rows, classes = logits.shape[0] * logits.shape[1], logits.shape[2]
    block_k = triton.next_power_of_2(classes)
    block_r = max(1, SAMPLE_ELEMENTS // block_k)
    blocks = {"BLOCK_R": block_r, "BLOCK_K": block_k}
    return (triton.cdiv(rows, block_r),), blocks, (rows, logits.shape[1], classes)


class _StraightThroughSample(torch.autograd.Function):
    """The sample, written into ``outputs`` (the first ``[M, C, K]`` or, like the others,
    ``[M, C * K]`` with unit column stride: slices of a buffer allowed, any dtypes), so that each
    reader of the sample can have a tensor of its own and the backward kernel sums their
    gradients (autograd would add them, and cast bf16 ones, in kernels of their own at every
    step); optionally with the filter's carried copy. ``copy_dtype`` (with a carry) writes the
    carried copy in that dtype (the next step's matmul reads it as it is) and adds an output, a
    copy of the logits for their other reader (the stacked posterior logits)."""

    @staticmethod
    def forward(ctx, logits, unimix, noise, carry_keep, carry_start, copy_dtype, outputs):
        grouped, draws = (
            logits.reshape(-1, *logits.shape[-2:]),
            noise.reshape(-1, *noise.shape[-2:]),
        )
        out, *copies = outputs
        carry = carry_keep is not None
        split = carry and copy_dtype is not None
        carried = out
        if carry:
            dtype = copy_dtype if split else out.dtype
            carried = torch.empty(carry_start.shape, dtype=dtype, device=out.device)
        logits_copy = (
            torch.empty_like(logits, memory_format=torch.contiguous_format) if split else out
        )
        cats, classes = logits.shape[-2:]
        if out.numel():
            grid, blocks, sizes = _sample_args(grouped)
            # Each output as [M, C * K] rows, whose stride the kernel takes.
            flat = [t.view(-1, cats * classes) for t in outputs]
            pointers, strides = copy_args(flat[1:], out, MAX_SAMPLE_COPIES)
            _sample_forward_kernel[grid](
                grouped, draws, out, *pointers,
                carry_keep if carry else out, carry_start if carry else out, carried,
                logits_copy, 1.0 - unimix, unimix / classes, *sizes, *grouped.stride(),
                *draws.stride(), flat[0].stride(0), *strides,
                carry_keep.stride(0) if carry else 0, *(carry_start.stride() if carry else (0, 0)),
                COPIES=len(copies), CARRY=carry, SPLIT=split, **blocks,
            )  # fmt: skip
        ctx.save_for_backward(logits, carry_keep)
        # An unread output's gradient stays None (the filter's last carry): no zeros to add.
        ctx.set_materialize_grads(False)
        ctx.keep = 1.0 - unimix
        ctx.copies = len(copies)
        ctx.start_shape = carry_start.shape if carry else None
        ctx.start_dtype = carry_start.dtype if carry else None
        results = [alias(t) for t in outputs]
        if carry:
            results.append(carried)
        if split:
            results.append(logits_copy)
        return tuple(results)

    @staticmethod
    def backward(ctx, grad_out, *rest):
        logits, carry_keep = ctx.saved_tensors
        grad_copies = [unit_columns(g) for g in rest[: ctx.copies]]
        grad_carried, grad_copy = (*rest[ctx.copies :], None, None)[:2]
        carry = carry_keep is not None and grad_carried is not None
        grouped = logits.reshape(-1, *logits.shape[-2:])
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_carried = grad_carried.contiguous() if carry else None
        grad_start = None
        write_start = carry and ctx.needs_input_grad[4] and grad_carried.dtype != ctx.start_dtype
        if write_start:
            grad_start = torch.empty(ctx.start_shape, dtype=ctx.start_dtype, device=logits.device)
        elif carry and ctx.needs_input_grad[4]:
            grad_start = grad_carried.view(ctx.start_shape)
        if grad_out is not None:
            grad_out = grad_out.reshape(grouped.shape)
        if grad_copy is not None:
            grad_copy = grad_copy.reshape(grouped.shape)
        if grouped.numel():
            grid, blocks, sizes = _sample_args(grouped)
            pointers, strides = copy_args(grad_copies, grad_logits, MAX_SAMPLE_COPIES)
            read = sum(1 << i for i, g in enumerate(grad_copies) if g is not None)
            _sample_backward_kernel[grid](
                grouped, grad_logits if grad_out is None else grad_out,
                *pointers, carry_keep if carry else grad_logits,
                grad_carried if carry else grad_logits,
                grad_logits if grad_copy is None else grad_copy,
                grad_start if write_start else grad_logits, grad_logits, ctx.keep, *sizes,
                *grouped.stride(), *(grad_out.stride() if grad_out is not None else (0, 0, 0)),
                *strides,
                *(grad_copy.stride() if grad_copy is not None else (0, 0, 0)),
                carry_keep.stride(0) if carry else 0, HAS_OUT=grad_out is not None, GRADS=read,
                CARRY=carry, HAS_COPY=grad_copy is not None, WRITE_START=write_start, **blocks,
            )  # fmt: skip
        return grad_logits, None, None, None, grad_start, None, None


def _output_dtype(logits: torch.Tensor, noise: torch.Tensor) -> torch.dtype:
    """``logits``' dtype, or float32 under autocast (where torch's softmax computes float32)."""
    if logits.dim() < 2 or noise.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and noise {tuple(noise.shape)} differ")
    if torch.is_autocast_enabled(logits.device.type):
        return torch.promote_types(logits.dtype, torch.float32)
    return logits.dtype


def fused_straight_through_sample(
    logits: torch.Tensor, unimix: float, noise: torch.Tensor
) -> torch.Tensor:
    """:func:`~dreamer.world_model.sampling.straight_through_sample` in one kernel each way.

    Args:
        logits: ``[..., C, K]``; any strides whose leading dims can be viewed as one.
        unimix: weight of the uniform mixture.
        noise: ``Exp(1)`` draws, the shape of ``logits`` (any such strides).

    Returns:
        The exact one-hot ``[..., C, K]`` of ``argmax((1 - unimix) softmax + unimix / K) / noise``;
        its gradient is ``(1 - unimix)`` times the softmax's. In ``logits``' dtype, or float32
        under autocast, where torch's softmax would compute (and return) float32.
    """
    out = torch.empty(logits.shape, dtype=_output_dtype(logits, noise), device=logits.device)
    (sample,) = _StraightThroughSample.apply(logits, float(unimix), noise, None, None, None, [out])
    return sample


def fused_sample_carried(
    logits: torch.Tensor,
    unimix: float,
    noise: torch.Tensor,
    keep: torch.Tensor,
    start: torch.Tensor,
    copy_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`fused_straight_through_sample` flattened to ``[M, C * K]``, and the filter's next
    input ``start + sample * keep`` from the same kernel: ``(sample, carried)``.

    Args:
        logits, unimix, noise: as :func:`fused_straight_through_sample`, with logits ``[M, C, K]``.
        keep: ``[M, 1]``: 0 where the next step starts a segment, 1 elsewhere.
        start: ``[M, C * K]`` (any strides): the state a segment starts from.
        copy_dtype: the carried state's dtype (what the next step's matmul reads), and a third
            output, a copy of the logits for their other reader: ``(sample, carried, logits)``.
            Backward, one kernel sums what the outputs' readers send back.
    """
    rows, cats, classes = logits.shape
    if keep.shape[0] != rows or start.shape != (rows, cats * classes):
        raise ValueError(f"keep {tuple(keep.shape)} / start {tuple(start.shape)} do not fit")
    out = torch.empty(logits.shape, dtype=_output_dtype(logits, noise), device=logits.device)
    sample, *rest = _StraightThroughSample.apply(
        logits, float(unimix), noise, keep, start, copy_dtype, [out]
    )
    return sample.flatten(-2), *rest


def fused_sample_into(
    logits: torch.Tensor, unimix: float, noise: torch.Tensor, outputs: list[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """:func:`fused_straight_through_sample` of ``[M, C, K]`` logits, flattened to ``[M, C * K]``
    and written into each of ``outputs`` (1 to ``1 + MAX_SAMPLE_COPIES`` such tensors with unit
    column stride, e.g. slices of a trajectory buffer, in any dtypes), which it returns as
    tensors with gradients: one per reader of the sample. Backward, one kernel sums their
    gradients."""
    rows, cats, classes = logits.shape
    _output_dtype(logits, noise)  # checks the shapes
    if not 1 <= len(outputs) <= 1 + MAX_SAMPLE_COPIES:
        raise ValueError(f"1 to {1 + MAX_SAMPLE_COPIES} outputs, got {len(outputs)}")
    for out in outputs:
        if out.shape != (rows, cats * classes) or out.stride(-1) != 1:
            raise ValueError(
                f"an output {tuple(out.shape)} with strides {out.stride()} does not fit"
            )
    return _StraightThroughSample.apply(
        logits, float(unimix), noise, None, None, None, list(outputs)
    )
