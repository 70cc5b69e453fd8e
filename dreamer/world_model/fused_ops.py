"""Triton kernels for the two element-wise chains run at every RSSM step, forward and backward.

On a GPU the learner is bound by its number of kernels (docs/benchmarks.md), and the 64-step
filter and the 15-step imagination run these chains at every step of both passes:

* :func:`gru_gate_update`: the block GRU's gate arithmetic (``gru_step``'s last lines), 7 ATen
  ops forward and 12 backward in torch, here one kernel each way. It reads the gates in the
  block-major layout ``block_linear`` leaves them in, so no transpose copy is made, and its
  backward recomputes the gate activations from the pre-activations instead of saving them.
* :func:`fused_straight_through_sample`: softmax, uniform mix, Gumbel-max ``argmax`` and the
  straight-through one-hot (``straight_through_sample``), 9 ATen ops forward and 2 backward,
  here one kernel each way. Its backward recomputes the softmax from the logits: the filter
  keeps them anyway (the KL loss reads them), and elsewhere they are the size of the softmax
  output that torch's backward would have kept.

Both compute in float32 and store in the tensors' own dtypes. Host side they only allocate
through torch and launch on the current stream: no syncs, so they can be captured in a CUDA
graph (the first call, which compiles, must come before capture; GraphedUpdate's warm-up does
that). The kernels use only long-stable ``triton.language`` APIs (``load``/``store`` with masks,
``where``, ``exp``, ``sigmoid``, ``max``/``sum``/``argmax``, ``.to``; nothing newer than Triton
3.2, and no ``tanh``, whose module moved between versions), so the Triton bundled with any
torch >= 2.11 should run them; the CPU tests run them through Triton's interpreter
(``tests/test_fused_ops.py``).

Dispatch: :func:`use_fused` is true for CUDA tensors when Triton imports and the switch
(:func:`set_fused_kernels`, config ``learner.fused_kernels``) is on; callers fall back to the
torch code otherwise.
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton run the torch code
    triton = None

_enabled = True

# Elements per program of the GRU kernels, and logits per program of the sample kernels.
GRU_BLOCK = 1024
SAMPLE_ELEMENTS = 1024


def set_fused_kernels(enabled: bool) -> None:
    """Turn the Triton path on or off for later calls (e.g. to time against the torch code).

    A CUDA graph keeps the path it was captured with: set this before building the learner.
    """
    global _enabled
    _enabled = bool(enabled)


def fused_kernels_enabled() -> bool:
    """Whether the switch is on (Triton may still be missing: see :func:`use_fused`)."""
    return _enabled


def use_fused(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run on ``tensors``: Triton importable, the switch on,
    and all on CUDA, or any device under Triton's CPU interpreter (``TRITON_INTERPRET=1``, how
    the tests run the RSSM with every kernel)."""
    if not _enabled or triton is None:
        return False
    return all(t.is_cuda for t in tensors) or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _gate_activations(reset, candidate, update, update_bias):
        """``sigmoid(reset)``, ``tanh(sigmoid(reset) * candidate)``, ``sigmoid(update + bias)``."""
        reset = tl.sigmoid(reset)
        # tanh(x) = 2 sigmoid(2x) - 1: tl.sigmoid is core Triton, a tanh is not in every version.
        candidate = 2.0 * tl.sigmoid(2.0 * reset * candidate) - 1.0
        return reset, candidate, tl.sigmoid(update + update_bias)

    @triton.jit
    def _gru_inputs(gates, belief, total, width, group, gate_sb, gate_sn, gate_sj, bel_sn, bel_sj,
                    BLOCK: tl.constexpr):  # fmt: skip
        """This program's elements of the flat ``[N, blocks * g]`` output: their flat index, mask,
        row and column, and their reset, candidate, update and belief inputs in float32."""
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < total
        row, column = index // width, index % width
        gate = gates + (column // group) * gate_sb + row * gate_sn + (column % group) * gate_sj
        reset = tl.load(gate, mask=mask, other=0.0).to(tl.float32)
        candidate = tl.load(gate + group * gate_sj, mask=mask, other=0.0).to(tl.float32)
        update = tl.load(gate + 2 * group * gate_sj, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(belief + row * bel_sn + column * bel_sj, mask=mask, other=0.0)
        return index, mask, row, column, reset, candidate, update, h.to(tl.float32)

    @triton.jit
    def _gru_forward_kernel(gates, belief, out, update_bias, total, width, group, gate_sb,
                            gate_sn, gate_sj, bel_sn, bel_sj, BLOCK: tl.constexpr):  # fmt: skip
        index, mask, _, _, reset, candidate, update, h = _gru_inputs(
            gates, belief, total, width, group, gate_sb, gate_sn, gate_sj, bel_sn, bel_sj, BLOCK
        )
        _, candidate, update = _gate_activations(reset, candidate, update, update_bias)
        value = h + update * (candidate - h)
        tl.store(out + index, value.to(out.dtype.element_ty), mask=mask)

    @triton.jit
    def _gru_backward_kernel(gates, belief, grad_out, grad_gates, grad_belief, update_bias,
                             total, width, group, rows, gate_sb, gate_sn, gate_sj, bel_sn,
                             bel_sj, BLOCK: tl.constexpr):  # fmt: skip
        index, mask, row, column, reset, candidate, update, h = _gru_inputs(
            gates, belief, total, width, group, gate_sb, gate_sn, gate_sj, bel_sn, bel_sj, BLOCK
        )
        grad = tl.load(grad_out + index, mask=mask, other=0.0).to(tl.float32)
        s_reset, tanh, s_update = _gate_activations(reset, candidate, update, update_bias)
        grad_update = grad * (tanh - h) * s_update * (1.0 - s_update)
        grad_inner = grad * s_update * (1.0 - tanh * tanh)  # through tanh(s_reset * candidate)
        grad_candidate = grad_inner * s_reset
        grad_reset = grad_inner * candidate * s_reset * (1.0 - s_reset)
        # grad_gates is a contiguous [blocks, N, 3 g], like the gates block_linear makes.
        dst = grad_gates + ((column // group) * rows + row) * (3 * group) + column % group
        dtype = grad_gates.dtype.element_ty
        tl.store(dst, grad_reset.to(dtype), mask=mask)
        tl.store(dst + group, grad_candidate.to(dtype), mask=mask)
        tl.store(dst + 2 * group, grad_update.to(dtype), mask=mask)
        value = grad * (1.0 - s_update)
        tl.store(grad_belief + index, value.to(grad_belief.dtype.element_ty), mask=mask)

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
    def _sample_forward_kernel(logits, noise, out, keep, floor, rows, cats, classes, l_s0, l_s1,
                               l_s2, n_s0, n_s1, n_s2, BLOCK_R: tl.constexpr,
                               BLOCK_K: tl.constexpr):  # fmt: skip
        probs, row, k, k_mask, mask = _sample_tile(
            logits, rows, cats, classes, l_s0, l_s1, l_s2, BLOCK_R, BLOCK_K
        )
        probs = keep * probs + floor  # the uniform mix (keep = 1 - unimix, floor = unimix / K)
        offset = (row // cats) * n_s0 + (row % cats) * n_s1
        draw = tl.load(noise + offset[:, None] + k[None, :] * n_s2, mask=mask, other=1.0)
        # Gumbel-max in its exponential-race form; padding classes score below every real one.
        score = tl.where(k_mask[None, :], probs / draw.to(tl.float32), -1.0)
        index = tl.argmax(score, axis=1)
        one_hot = tl.where(k[None, :] == index[:, None], 1.0, 0.0)
        dst = out + row[:, None] * classes + k[None, :]
        tl.store(dst, one_hot.to(out.dtype.element_ty), mask=mask)

    @triton.jit
    def _sample_backward_kernel(logits, grad_out, grad_logits, keep, rows, cats, classes, l_s0,
                                l_s1, l_s2, BLOCK_R: tl.constexpr,
                                BLOCK_K: tl.constexpr):  # fmt: skip
        probs, row, k, _, mask = _sample_tile(
            logits, rows, cats, classes, l_s0, l_s1, l_s2, BLOCK_R, BLOCK_K
        )
        flat = row[:, None] * classes + k[None, :]
        grad = tl.load(grad_out + flat, mask=mask, other=0.0).to(tl.float32)
        # The straight-through gradient is the mixed probabilities': keep * softmax backward.
        value = keep * probs * (grad - tl.sum(grad * probs, axis=1)[:, None])
        tl.store(grad_logits + flat, value.to(grad_logits.dtype.element_ty), mask=mask)


def _gru_args(gates: torch.Tensor, belief: torch.Tensor) -> tuple:
    """Sizes and strides the GRU kernels take after their pointers and bias."""
    blocks, rows, three_g = gates.shape
    return (
        rows * belief.shape[1],
        belief.shape[1],
        three_g // 3,
        *gates.stride(),
        *belief.stride(),
    )


class _GruGateUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, belief, update_bias):
        out = belief.new_empty(belief.shape, dtype=torch.promote_types(gates.dtype, belief.dtype))
        if out.numel():
            args = _gru_args(gates, belief)
            grid = (triton.cdiv(args[0], GRU_BLOCK),)
            _gru_forward_kernel[grid](gates, belief, out, update_bias, *args, BLOCK=GRU_BLOCK)
        ctx.save_for_backward(gates, belief)
        ctx.update_bias = update_bias
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gates, belief = ctx.saved_tensors
        grad_gates = torch.empty(gates.shape, dtype=gates.dtype, device=gates.device)
        grad_belief = torch.empty(belief.shape, dtype=belief.dtype, device=belief.device)
        if grad_out.numel():
            total, width, group, *strides = _gru_args(gates, belief)
            grid = (triton.cdiv(total, GRU_BLOCK),)
            _gru_backward_kernel[grid](
                gates, belief, grad_out.contiguous(), grad_gates, grad_belief, ctx.update_bias,
                total, width, group, gates.shape[1], *strides, BLOCK=GRU_BLOCK,
            )  # fmt: skip
        return grad_gates, grad_belief, None


def gru_gate_update(gates: torch.Tensor, belief: torch.Tensor, update_bias: float) -> torch.Tensor:
    """The block GRU's next belief from its gate pre-activations, in one kernel each way.

    Args:
        gates: ``[blocks, N, 3 g]`` block-major pre-activations (reset, candidate, update), as
            ``block_linear`` returns them; any strides.
        belief: ``[N, blocks * g]`` current belief; any strides (e.g. an expanded ``h0``).
        update_bias: added to the update gate's pre-activation.

    Returns:
        ``[N, blocks * g]``: ``h + sigmoid(u + bias) * (tanh(sigmoid(r) * c) - h)`` per block, in
        the promoted dtype of ``gates`` and ``belief``.
    """
    blocks, rows, three_g = gates.shape
    if belief.shape != (rows, blocks * three_g // 3) or three_g % 3:
        raise ValueError(f"gates {tuple(gates.shape)} do not fit belief {tuple(belief.shape)}")
    return _GruGateUpdate.apply(gates, belief, float(update_bias))


def _sample_args(logits: torch.Tensor) -> tuple[tuple, dict, tuple]:
    """Grid, block sizes and leading sizes of the sample kernels for ``[M, C, K]`` logits."""
    rows, classes = logits.shape[0] * logits.shape[1], logits.shape[2]
    block_k = triton.next_power_of_2(classes)
    block_r = max(1, SAMPLE_ELEMENTS // block_k)
    blocks = {"BLOCK_R": block_r, "BLOCK_K": block_k}
    return (triton.cdiv(rows, block_r),), blocks, (rows, logits.shape[1], classes)


class _StraightThroughSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, unimix, noise, out_dtype):
        grouped, draws = (
            logits.reshape(-1, *logits.shape[-2:]),
            noise.reshape(-1, *noise.shape[-2:]),
        )
        out = torch.empty(logits.shape, dtype=out_dtype, device=logits.device)
        classes = logits.shape[-1]
        if out.numel():
            grid, blocks, sizes = _sample_args(grouped)
            _sample_forward_kernel[grid](
                grouped, draws, out, 1.0 - unimix, unimix / classes, *sizes, *grouped.stride(),
                *draws.stride(), **blocks,
            )  # fmt: skip
        ctx.save_for_backward(logits)
        ctx.keep = 1.0 - unimix
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (logits,) = ctx.saved_tensors
        grouped = logits.reshape(-1, *logits.shape[-2:])
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        if grad_out.numel():
            grid, blocks, sizes = _sample_args(grouped)
            _sample_backward_kernel[grid](
                grouped, grad_out.contiguous(), grad_logits, ctx.keep, *sizes, *grouped.stride(),
                **blocks,
            )  # fmt: skip
        return grad_logits, None, None, None


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
    if logits.dim() < 2 or noise.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and noise {tuple(noise.shape)} differ")
    out_dtype = logits.dtype
    if torch.is_autocast_enabled(logits.device.type):
        out_dtype = torch.promote_types(out_dtype, torch.float32)
    return _StraightThroughSample.apply(logits, float(unimix), noise, out_dtype)
