"""Triton kernels for the element-wise chains run at every RSSM step, forward and backward.

On a GPU the learner is bound by its number of kernels (docs/benchmarks.md), and the 64-step
filter and the 15-step imagination run these chains at every step of both passes:

* :func:`gru_gate_update`: the block GRU's gate arithmetic (``gru_step``'s last lines), 7 ATen
  ops forward and 12 backward in torch, here one kernel each way. It reads the gates in the
  block-major layout ``block_linear`` leaves them in, so no transpose copy is made, adds the
  gate layer's bias (a ``baddbmm`` would first copy it into its output: one more kernel), and
  its backward recomputes the gate activations from the pre-activations instead of saving them.
  :func:`gru_gate_update_carried` also writes the filter's next input (the belief carried on, or
  replaced at a segment start), and with ``copy_dtype`` a copy of each output for each of the
  filter's readers, so the backward kernel sums their gradients (autograd would add
  them, and cast the bf16 ones, in six kernels a step). :func:`gru_gate_update_into` writes the
  next belief into a tensor per reader that the caller gives (the dream's, some of them slices
  of its trajectory buffers: :mod:`dreamer.imagination.fused_dream`).
* :mod:`dreamer.world_model.fused_sample`: the straight-through latent sample.
* :mod:`dreamer.actor_critic.fused_action`: the actor's bounded tanh-normal sample in the dream.

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

from dreamer.world_model.filled_buffers import alias

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton run the torch code
    triton = None

_enabled = True

# Elements per program of the GRU kernels.
GRU_BLOCK = 1024


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
    def _gru_inputs(gates, belief, bias, total, width, group, gate_sb, gate_sn, gate_sj, bel_sn,
                    bel_sj, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """This program's elements of the flat ``[N, blocks * g]`` output: their flat index, mask,
        row and column, and their reset, candidate, update (bias added) and belief in float32."""
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < total
        row, column = index // width, index % width
        block, within = column // group, column % group
        gate = gates + block * gate_sb + row * gate_sn + within * gate_sj
        reset = tl.load(gate, mask=mask, other=0.0).to(tl.float32)
        candidate = tl.load(gate + group * gate_sj, mask=mask, other=0.0).to(tl.float32)
        update = tl.load(gate + 2 * group * gate_sj, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:  # the gate layer's bias, flat [blocks * 3 g]
            own = bias + block * 3 * group + within
            reset += tl.load(own, mask=mask, other=0.0).to(tl.float32)
            candidate += tl.load(own + group, mask=mask, other=0.0).to(tl.float32)
            update += tl.load(own + 2 * group, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(belief + row * bel_sn + column * bel_sj, mask=mask, other=0.0)
        return index, mask, row, column, reset, candidate, update, h.to(tl.float32)

    @triton.jit
    def store_copy(pointer, row_stride, row, column, value, mask, ON: tl.constexpr):
        """Writes ``value`` into one copy ``[N, width]`` (unit column stride), in its dtype."""
        if ON:
            dst = pointer + row * row_stride + column
            tl.store(dst, value.to(pointer.dtype.element_ty), mask=mask)

    @triton.jit
    def add_copy_grad(grad, pointer, row_stride, row, column, mask, ON: tl.constexpr):
        """``grad`` plus one copy's gradient (unit column stride), read in float32."""
        if ON:
            grad += tl.load(pointer + row * row_stride + column, mask=mask, other=0.0).to(
                tl.float32
            )
        return grad

    @triton.jit
    def _gru_forward_kernel(gates, belief, bias, out, c1, c2, c3, c4, c5, c6, keep, start,
                            carried, carried_own, carried_proj, update_bias, total, width, group,
                            gate_sb, gate_sn, gate_sj, bel_sn, bel_sj, out_sn, c1_sn, c2_sn,
                            c3_sn, c4_sn, c5_sn, c6_sn, keep_sn, start_sn, start_sj,
                            HAS_BIAS: tl.constexpr, COPIES: tl.constexpr, CARRY: tl.constexpr,
                            SPLIT: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        index, mask, row, column, reset, candidate, update, h = _gru_inputs(
            gates, belief, bias, total, width, group, gate_sb, gate_sn, gate_sj, bel_sn, bel_sj,
            HAS_BIAS, BLOCK,
        )  # fmt: skip
        _, candidate, update = _gate_activations(reset, candidate, update, update_bias)
        value = h + update * (candidate - h)
        tl.store(out + row * out_sn + column, value.to(out.dtype.element_ty), mask=mask)
        # One copy per reader, each in its reader's dtype (see _GruGateUpdate).
        store_copy(c1, c1_sn, row, column, value, mask, COPIES > 0)
        store_copy(c2, c2_sn, row, column, value, mask, COPIES > 1)
        store_copy(c3, c3_sn, row, column, value, mask, COPIES > 2)
        store_copy(c4, c4_sn, row, column, value, mask, COPIES > 3)
        store_copy(c5, c5_sn, row, column, value, mask, COPIES > 4)
        store_copy(c6, c6_sn, row, column, value, mask, COPIES > 5)
        if CARRY:  # the next step's input: start + value * keep
            k = tl.load(keep + row * keep_sn, mask=mask, other=0.0).to(tl.float32)
            s = tl.load(start + row * start_sn + column * start_sj, mask=mask, other=0.0)
            value = s.to(tl.float32) + value * k
            tl.store(carried + index, value.to(carried.dtype.element_ty), mask=mask)
            if SPLIT:
                tl.store(carried_own + index, value.to(carried_own.dtype.element_ty), mask=mask)
                tl.store(carried_proj + index, value.to(carried_proj.dtype.element_ty), mask=mask)

    @triton.jit
    def _gru_backward_kernel(gates, belief, bias, grad_out, g1, g2, g3, g4, g5, g6, keep,
                             grad_carried, grad_own, grad_proj, grad_carried_sum, grad_gates,
                             grad_belief, update_bias, total, width, group, rows, gate_sb,
                             gate_sn, gate_sj, bel_sn, bel_sj, go_sn, go_sj, g1_sn, g2_sn, g3_sn,
                             g4_sn, g5_sn, g6_sn, keep_sn, HAS_BIAS: tl.constexpr,
                             HAS_OUT: tl.constexpr, GRADS: tl.constexpr, CARRY: tl.constexpr,
                             HAS_CARRIED: tl.constexpr, HAS_OWN: tl.constexpr,
                             HAS_PROJ: tl.constexpr, WRITE_SUM: tl.constexpr,
                             BLOCK: tl.constexpr):  # fmt: skip
        index, mask, row, column, reset, candidate, update, h = _gru_inputs(
            gates, belief, bias, total, width, group, gate_sb, gate_sn, gate_sj, bel_sn, bel_sj,
            HAS_BIAS, BLOCK,
        )  # fmt: skip
        # Each output's gradient is read where its reader left it and summed here in float32,
        # instead of autograd adding them (and casting bf16 ones) in kernels of their own.
        grad = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_OUT:  # (through its strides: a slice of the stacked beliefs' gradient)
            grad += tl.load(grad_out + row * go_sn + column * go_sj, mask=mask, other=0.0).to(
                tl.float32
            )
        # GRADS: bit i set where copy i + 1 has a gradient.
        grad = add_copy_grad(grad, g1, g1_sn, row, column, mask, GRADS % 2 == 1)
        grad = add_copy_grad(grad, g2, g2_sn, row, column, mask, GRADS // 2 % 2 == 1)
        grad = add_copy_grad(grad, g3, g3_sn, row, column, mask, GRADS // 4 % 2 == 1)
        grad = add_copy_grad(grad, g4, g4_sn, row, column, mask, GRADS // 8 % 2 == 1)
        grad = add_copy_grad(grad, g5, g5_sn, row, column, mask, GRADS // 16 % 2 == 1)
        grad = add_copy_grad(grad, g6, g6_sn, row, column, mask, GRADS // 32 % 2 == 1)
        if CARRY:  # the carried copies' gradients reach the value through keep
            carried = tl.zeros([BLOCK], dtype=tl.float32)
            if HAS_CARRIED:
                carried += tl.load(grad_carried + index, mask=mask, other=0.0).to(tl.float32)
            if HAS_OWN:
                carried += tl.load(grad_own + index, mask=mask, other=0.0).to(tl.float32)
            if HAS_PROJ:
                carried += tl.load(grad_proj + index, mask=mask, other=0.0).to(tl.float32)
            if WRITE_SUM:  # the start values' gradient
                dtype = grad_carried_sum.dtype.element_ty
                tl.store(grad_carried_sum + index, carried.to(dtype), mask=mask)
            k = tl.load(keep + row * keep_sn, mask=mask, other=0.0).to(tl.float32)
            grad += k * carried
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


# Copies of the next belief one GRU call can write besides its main output.
MAX_COPIES = 6


def copy_args(
    tensors: list[torch.Tensor | None], fallback: torch.Tensor, slots: int = MAX_COPIES
) -> tuple[list, list]:
    """Pointers and row strides of a kernel's ``slots`` copy slots for up to that many
    ``[N, width]`` tensors (missing ones stand in as ``fallback``, unread by the kernel)."""
    pointers = [fallback if t is None else t for t in tensors]
    pointers += [fallback] * (slots - len(pointers))
    return pointers, [t.stride(0) for t in pointers]


def unit_columns(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` with unit column stride, as the kernels read a copy's gradient (or None)."""
    return tensor if tensor is None or tensor.stride(-1) == 1 else tensor.contiguous()


class _GruGateUpdate(torch.autograd.Function):
    """The gate update, optionally with the gate bias added and the carried copy written.

    ``outputs`` are the tensors the next belief is written to, the first the main one, each
    ``[N, width]`` with unit column stride (slices of a buffer allowed), in any dtype. Each of a
    step's readers can so have a tensor of its own: a tensor read by several ops gets the sum of
    their gradients from autograd, one add kernel per extra reader and step, after a cast kernel
    for each bf16 gradient of a float32 tensor; with a tensor per reader, the backward kernel
    reads every gradient as its reader left it and sums them itself.

    ``carried_outputs`` (with ``keep``/``start``: the filter) are the carried belief and, with
    two more, its copies for the next step's two matmuls.
    """

    @staticmethod
    def forward(ctx, gates, belief, bias, keep, start, update_bias, outputs, carried_outputs):
        out, *copies = outputs
        carry, split = keep is not None, len(carried_outputs) == 3
        carried = carried_outputs + [out] * (3 - len(carried_outputs))
        if out.numel():
            args = _gru_args(gates, belief)
            pointers, strides = copy_args(copies, out)
            _gru_forward_kernel[(triton.cdiv(args[0], GRU_BLOCK),)](
                gates, belief, gates if bias is None else bias, out, *pointers,
                keep if carry else out, start if carry else out, *carried, update_bias, *args,
                out.stride(0), *strides, keep.stride(0) if carry else 0,
                *(start.stride() if carry else (0, 0)), HAS_BIAS=bias is not None,
                COPIES=len(copies), CARRY=carry, SPLIT=split, BLOCK=GRU_BLOCK,
            )  # fmt: skip
        ctx.save_for_backward(gates, belief, bias, keep)
        # An unread output's gradient stays None (the filter's last carry): no zeros to add.
        ctx.set_materialize_grads(False)
        ctx.update_bias = update_bias
        ctx.copies = len(copies)
        ctx.start_dtype = None if start is None else start.dtype
        ctx.start_shape = None if start is None else start.shape
        return tuple(alias(t) for t in (*outputs, *carried_outputs))

    @staticmethod
    def backward(ctx, grad_out, *rest):
        gates, belief, bias, keep = ctx.saved_tensors
        grad_copies = [unit_columns(g) for g in rest[: ctx.copies]]
        grad_carried, grad_own, grad_proj = (*rest[ctx.copies :], None, None, None)[:3]
        grad_gates = torch.empty(gates.shape, dtype=gates.dtype, device=gates.device)
        grad_belief = torch.empty(belief.shape, dtype=belief.dtype, device=belief.device)
        carried = [g for g in (grad_carried, grad_own, grad_proj) if g is not None]
        carry = keep is not None and bool(carried)
        split = len(rest) - ctx.copies == 3
        # Without the split, the one carried gradient is the start's; with it, the kernel sums.
        write_sum = carry and split and ctx.needs_input_grad[4]
        grad_start = None
        if write_sum:
            grad_start = belief.new_empty(ctx.start_shape, dtype=ctx.start_dtype)
        elif carry and ctx.needs_input_grad[4]:
            grad_start = grad_carried.view(ctx.start_shape)
        total, width, group, *strides = _gru_args(gates, belief)
        if total:
            grad_own, grad_proj, grad_carried = (
                None if g is None else g.contiguous() for g in (grad_own, grad_proj, grad_carried)
            )
            if grad_out is not None and grad_out.stride(-1) != 1:
                grad_out = grad_out.contiguous()
            any_grad = next(g for g in (grad_out, *carried, grad_gates) if g is not None)
            copy_pointers, copy_strides = copy_args(grad_copies, any_grad)
            read = sum(1 << i for i, g in enumerate(grad_copies) if g is not None)

            def pointer(g):
                return any_grad if g is None else g

            _gru_backward_kernel[(triton.cdiv(total, GRU_BLOCK),)](
                gates, belief, gates if bias is None else bias, pointer(grad_out),
                *copy_pointers, keep if carry else any_grad, pointer(grad_carried),
                pointer(grad_own), pointer(grad_proj), pointer(grad_start if write_sum else None),
                grad_gates, grad_belief, ctx.update_bias, total, width, group, gates.shape[1],
                *strides, *(grad_out.stride() if grad_out is not None else (0, 0)),
                *copy_strides, keep.stride(0) if carry else 0, HAS_BIAS=bias is not None,
                HAS_OUT=grad_out is not None, GRADS=read, CARRY=carry,
                HAS_CARRIED=grad_carried is not None, HAS_OWN=grad_own is not None,
                HAS_PROJ=grad_proj is not None, WRITE_SUM=write_sum, BLOCK=GRU_BLOCK,
            )  # fmt: skip
        grad_bias = None
        if ctx.needs_input_grad[2]:  # a bias whose gradient is not deferred
            grad_bias = grad_gates.sum(1, dtype=torch.float32).flatten().to(bias.dtype)
        return grad_gates, grad_belief, grad_bias, None, grad_start, None, None, None


def _check_gru_shapes(gates: torch.Tensor, belief: torch.Tensor, bias: torch.Tensor | None):
    blocks, rows, three_g = gates.shape
    if belief.shape != (rows, blocks * three_g // 3) or three_g % 3:
        raise ValueError(f"gates {tuple(gates.shape)} do not fit belief {tuple(belief.shape)}")
    if bias is not None and (bias.shape != (blocks * three_g,) or not bias.is_contiguous()):
        raise ValueError(
            f"the gate bias must be a contiguous [{blocks * three_g}], got {bias.shape}"
        )


def gru_gate_update(
    gates: torch.Tensor,
    belief: torch.Tensor,
    update_bias: float,
    gate_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The block GRU's next belief from its gate pre-activations, in one kernel each way.

    Args:
        gates: ``[blocks, N, 3 g]`` block-major pre-activations (reset, candidate, update), as
            ``block_linear`` returns them; any strides.
        belief: ``[N, blocks * g]`` current belief; any strides (e.g. an expanded ``h0``).
        update_bias: added to the update gate's pre-activation.
        gate_bias: the gate layer's bias ``[blocks * 3 g]``, added to ``gates`` here (so the
            matmul need not copy it into its output first); its gradient is the row sum of the
            gates' and is returned only when it requires one.

    Returns:
        ``[N, blocks * g]``: ``h + sigmoid(u + bias) * (tanh(sigmoid(r) * c) - h)`` per block, in
        the promoted dtype of ``gates`` and ``belief``.
    """
    _check_gru_shapes(gates, belief, gate_bias)
    (out,) = _GruGateUpdate.apply(
        gates, belief, gate_bias, None, None, float(update_bias), [_new_out(gates, belief)], []
    )
    return out


def gru_gate_update_carried(
    gates: torch.Tensor,
    belief: torch.Tensor,
    update_bias: float,
    gate_bias: torch.Tensor | None,
    keep: torch.Tensor,
    start: torch.Tensor,
    copy_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, ...]:
    """:func:`gru_gate_update` and the filter's next input ``start + next_belief * keep`` from the
    same kernel (``keep`` ``[N, 1]``: 0 where the next step starts a segment, 1 elsewhere;
    ``start`` ``[N, blocks * g]``, any strides). Backward, the two outputs' gradients are
    combined inside the GRU's backward kernel: the multiply and add of a separate ``addcmul``
    cost two kernels each way per filter step.

    With ``copy_dtype``, a tensor for each of the filter's readers: ``(next_belief, next_belief
    in copy_dtype, carried, carried in copy_dtype twice)``, the copies for the posterior's matmul
    and the next step's two matmuls on the belief; backward, the kernel sums the five gradients
    itself (no add or cast kernels between the steps). Without it, ``(next_belief, carried)``.
    """
    _check_gru_shapes(gates, belief, gate_bias)
    if keep.shape[0] != belief.shape[0] or start.shape != belief.shape:
        raise ValueError(f"keep {tuple(keep.shape)} / start {tuple(start.shape)} do not fit")
    out = _new_out(gates, belief)
    carried = [torch.empty_like(out)]
    outputs = [out]
    if copy_dtype is not None:
        outputs.append(torch.empty_like(out, dtype=copy_dtype))
        carried += [torch.empty_like(out, dtype=copy_dtype) for _ in range(2)]
    return _GruGateUpdate.apply(
        gates, belief, gate_bias, keep, start, float(update_bias), outputs, carried
    )


def gru_gate_update_into(
    gates: torch.Tensor,
    belief: torch.Tensor,
    update_bias: float,
    gate_bias: torch.Tensor | None,
    outputs: list[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """:func:`gru_gate_update` written into each of ``outputs`` (1 to ``1 + MAX_COPIES``
    ``[N, blocks * g]`` tensors with unit column stride, e.g. slices of a trajectory buffer, in
    any dtypes), which it returns as tensors with gradients: one per reader of the next belief.
    Backward, the kernel sums their gradients (no add or cast kernels between the steps)."""
    _check_gru_shapes(gates, belief, gate_bias)
    if not 1 <= len(outputs) <= 1 + MAX_COPIES:
        raise ValueError(f"1 to {1 + MAX_COPIES} outputs, got {len(outputs)}")
    for out in outputs:
        if out.shape != belief.shape or out.stride(-1) != 1:
            raise ValueError(
                f"an output {tuple(out.shape)} with strides {out.stride()} does not fit"
            )
    return _GruGateUpdate.apply(
        gates, belief, gate_bias, None, None, float(update_bias), list(outputs), []
    )


def _new_out(gates: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
    """The next belief's own tensor, in the promoted dtype of ``gates`` and ``belief``."""
    dtype = torch.promote_types(gates.dtype, belief.dtype)
    return belief.new_empty(belief.shape, dtype=dtype)
