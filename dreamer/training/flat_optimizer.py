"""The DreamerV3 optimizer step as three kernels over flat buffers, for the CUDA-graph learner.

:func:`~dreamer.training.capturable_optimizer.optimizer_step` runs about 18 ``_foreach`` passes
per parameter group: 54 multi-tensor kernels and 0.90 ms at the end of every update on an H100
(docs/benchmarks.md), all of it element-wise work over 12M parameters that one pass could do.
One pass needs every tensor it touches at a fixed address a kernel can reach without a pointer
per tensor, so:

* :func:`flatten_parameters` (at build, before any CUDA graph records a parameter's address) puts
  every parameter the optimizer holds into one float32 buffer, each a view at an offset aligned to
  :data:`ALIGNMENT` elements. The ``Parameter`` objects, the modules, the param groups and the
  state dicts stay what they were; only where the numbers live changes.
* :class:`FlatOptimizerStep` binds the optimizer's ``rms``/``momentum`` state to two buffers of
  the same layout (copying what a restored checkpoint put there) and, per call, copies the
  gradients into a third (one multi-tensor copy), sums squares per block of every parameter and
  its gradient (:func:`_partial_norms`), and applies adaptive clipping, the RMS and momentum
  updates, the bias corrections and the warm-up to every element (:func:`_apply_update`),
  reading each group's step count from the device. Blocks never span two parameters; each update program adds its
  parameter's partial sums itself, so no kernel finishes the norms and nothing is atomic (the
  result does not depend on scheduling).

The arithmetic is that of ``optimizer_step`` (TorchRL's ``DreamerV3Optimizer.step``, whose
step count lives on the host); ``tests/test_flat_optimizer.py`` compares them through Triton's
interpreter and on CUDA. Parameters without a gradient are skipped, as TorchRL skips them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchrl.trainers.algorithms import DreamerV3Optimizer

from dreamer.world_model.fused_ops import triton, use_fused

if triton is not None:
    import triton.language as tl

# Parameters start at multiples of this many elements (256 bytes), so every view is as aligned
# as a tensor of its own (vector loads, cuBLAS, compiled kernels' alignment checks).
ALIGNMENT = 64
# Elements per program; a parameter of n elements has ceil(n / BLOCK) blocks.
BLOCK = 4096
# Per-group numbers the update kernel reads, in this order (:func:`group_numbers`).
HYPERPARAMETERS = (
    "lr",
    "warmup_steps",
    "beta1",
    "1 - beta1",
    "log(beta1)",
    "beta2",
    "1 - beta2",
    "log(beta2)",
    "eps",
    "agc",
    "parameter_norm_min",
)


def group_numbers(group: dict) -> list[float]:
    """A param group's :data:`HYPERPARAMETERS`, the derived ones worked out in double precision:
    in float32 ``1 - 0.999`` is 1.3e-5 off, and ``1 - beta ** step`` cancels (TorchRL takes
    both in Python floats)."""
    beta1, beta2 = float(group["beta1"]), float(group["beta2"])
    values = {
        "1 - beta1": 1.0 - beta1,
        "log(beta1)": math.log(beta1),
        "1 - beta2": 1.0 - beta2,
        "log(beta2)": math.log(beta2),
    }
    return [
        values[name] if name in values else float(group[name] or 0.0) for name in HYPERPARAMETERS
    ]


def _all_parameters(optimizer: DreamerV3Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def flatten_parameters(optimizer: DreamerV3Optimizer) -> bool:
    """Move every parameter of ``optimizer`` into one float32 buffer (as views of it, values kept).

    Call it before anything records a parameter's address (a CUDA graph, a copy meant to share
    memory). Returns False, changing nothing, unless all parameters are float32 on one device.
    """
    parameters = _all_parameters(optimizer)
    if not parameters or any(
        p.dtype != torch.float32 or p.device != parameters[0].device for p in parameters
    ):
        return False
    offsets, total = _layout(parameters)
    flat = torch.zeros(total, device=parameters[0].device)
    with torch.no_grad():
        for parameter, offset in zip(parameters, offsets, strict=True):
            view = _view(flat, offset, parameter)
            view.copy_(parameter)
            parameter.data = view
    return True


def _view(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The part of ``flat`` from ``offset`` on, shaped like ``like``."""
    return flat[offset : offset + like.numel()].view_as(like)


def _layout(parameters: list[torch.Tensor]) -> tuple[list[int], int]:
    """Each parameter's offset in the flat buffer and the buffer's length."""
    offsets, total = [], 0
    for parameter in parameters:
        offsets.append(total)
        total += -(-parameter.numel() // ALIGNMENT) * ALIGNMENT
    return offsets, total


def flat_buffer(parameters: list[torch.Tensor]) -> torch.Tensor | None:
    """The one float32 buffer all ``parameters`` are contiguous views of, or None if they are not
    (:func:`flatten_parameters` was not run, or something replaced a parameter's data since)."""
    if not parameters:
        return None
    storage = parameters[0].untyped_storage()
    end = 0  # in the optimizer's order, without overlaps (what the gradients' copy assumes)
    for parameter in parameters:
        if (
            parameter.dtype != torch.float32
            or not parameter.is_contiguous()
            or parameter.untyped_storage().data_ptr() != storage.data_ptr()
            or parameter.storage_offset() < end
        ):
            return None
        end = parameter.storage_offset() + parameter.numel()
    flat = torch.empty(0, dtype=torch.float32, device=parameters[0].device)
    return flat.set_(storage)


@dataclass
class _Blocks:
    """Where each program works: its first element, its length and its parameter's number; per
    parameter with a gradient, its first block and block count, and its param group."""

    start: torch.Tensor
    length: torch.Tensor
    segment: torch.Tensor
    segment_first: torch.Tensor
    segment_count: torch.Tensor
    segment_group: torch.Tensor
    most_blocks: int


class FlatOptimizerStep:
    """``step()``: one DreamerV3 optimizer step over flat buffers; returns the global gradient norm.

    Args:
        optimizer: TorchRL's optimizer, its parameters flattened (:func:`flatten_parameters`) and
            its ``rms``/``momentum`` state made (``init_optimizer_state``).
        steps: the groups' step counts ``[groups]`` on the device, advanced here by one per call.

    Build it with :meth:`create`, which returns None where this path does not apply. From then
    on the step owns the optimizer state: as with any captured graph, a later
    ``optimizer.load_state_dict`` would not be seen (restore a checkpoint before building it).
    """

    def __init__(self, optimizer: DreamerV3Optimizer, steps: torch.Tensor, params: torch.Tensor):
        self.optimizer = optimizer
        self.steps = steps
        self.params = params
        self.rms = torch.zeros_like(params)
        self.momentum = torch.zeros_like(params)
        with torch.no_grad():
            for parameter in _all_parameters(optimizer):
                state = optimizer.state[parameter]
                for name, flat in (("rms", self.rms), ("momentum", self.momentum)):
                    view = _view(flat, parameter.storage_offset(), parameter)
                    view.copy_(state[name])
                    state[name] = view
        # Read once, as a captured graph reads them: a later change of a group's lr is not seen.
        rows = [group_numbers(group) for group in optimizer.param_groups]
        self.hyperparameters = torch.tensor(rows, dtype=torch.float32, device=params.device)
        # Made here, before any capture, so the graph reads and writes fixed addresses; what no
        # gradient covers (padding, a parameter without one) stays zero.
        self.grads = torch.zeros_like(params)
        self._grad_views: list[torch.Tensor] = []
        self._blocks: _Blocks | None = None
        self._active: tuple[bool, ...] | None = None

    @classmethod
    def create(cls, optimizer: DreamerV3Optimizer, steps: torch.Tensor) -> FlatOptimizerStep | None:
        """The flat step for ``optimizer`` when its kernels can run (:func:`use_fused`) and its
        parameters are flat; None otherwise (the caller keeps the multi-tensor step)."""
        parameters = _all_parameters(optimizer)
        params = flat_buffer(parameters)
        if params is None or not use_fused(params):
            return None
        return cls(optimizer, steps, params)

    def _block_table(self, active: tuple[bool, ...]) -> _Blocks:
        """Blocks of the parameters that have a gradient (made once, before any capture)."""
        if active == self._active:
            return self._blocks
        if self.params.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "the parameters with a gradient changed between the warm-up and the CUDA graph "
                "capture; every update must give the same parameters a gradient"
            )
        start, length, segment, first, count, group_of = [], [], [], [], [], []
        parameters = [
            (p, g) for g, group in enumerate(self.optimizer.param_groups) for p in group["params"]
        ]
        for (parameter, group), has_grad in zip(parameters, active, strict=True):
            if not has_grad:
                continue
            blocks = range(0, parameter.numel(), BLOCK)
            first.append(len(start))
            count.append(len(blocks))
            group_of.append(group)
            for offset in blocks:
                start.append(parameter.storage_offset() + offset)
                length.append(min(BLOCK, parameter.numel() - offset))
                segment.append(len(first) - 1)
        device = self.params.device

        def table(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=device)

        self._blocks = _Blocks(
            *(table(v) for v in (start, length, segment, first, count, group_of)),
            most_blocks=max(count, default=1),
        )
        self._active = active
        self._grad_views = [
            _view(self.grads, p.storage_offset(), p)
            for (p, _), has_grad in zip(parameters, active, strict=True)
            if has_grad
        ]
        return self._blocks

    def _gather_gradients(self, parameters: list[torch.Tensor]) -> torch.Tensor:
        """Every gradient copied into :attr:`grads`, in the parameters' layout, by one
        multi-tensor copy (a ``torch.cat`` of the same took 210 µs of an update on an H100)."""
        with_grad = [p for p in parameters if p.grad is not None]
        torch._foreach_copy_(self._grad_views, [p.grad for p in with_grad])
        return self.grads

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Update every parameter that has a gradient; the gradients' global 2-norm (all of them)."""
        parameters = _all_parameters(self.optimizer)
        blocks = self._block_table(tuple(p.grad is not None for p in parameters))
        grads = self._gather_gradients(parameters)
        self.steps.add_(1.0)
        programs = blocks.start.numel()
        partials = grads.new_empty(programs, 2)
        _partial_norms[(programs,)](
            grads, self.params, blocks.start, blocks.length, partials, BLOCK=BLOCK, num_warps=8
        )
        _apply_update[(programs,)](
            self.params,
            grads,
            self.rms,
            self.momentum,
            partials,
            blocks.start,
            blocks.length,
            blocks.segment,
            blocks.segment_first,
            blocks.segment_count,
            blocks.segment_group,
            self.hyperparameters,
            self.steps,
            BLOCK=BLOCK,
            PARTIALS=max(16, triton.next_power_of_2(blocks.most_blocks)),
            HYPER=len(HYPERPARAMETERS),
            num_warps=8,
        )
        return partials[:, 0].sum().sqrt()


if triton is not None:

    @triton.jit
    def _partial_norms(grad_ptr, param_ptr, start_ptr, length_ptr, out_ptr, BLOCK: tl.constexpr):
        """Per block: the sum of squares of its gradient and of its parameter values."""
        block = tl.program_id(0)
        start = tl.load(start_ptr + block)
        length = tl.load(length_ptr + block)
        offsets = tl.arange(0, BLOCK)
        inside = offsets < length
        grad = tl.load(grad_ptr + start + offsets, mask=inside, other=0.0)
        param = tl.load(param_ptr + start + offsets, mask=inside, other=0.0)
        tl.store(out_ptr + 2 * block, tl.sum(grad * grad, 0))
        tl.store(out_ptr + 2 * block + 1, tl.sum(param * param, 0))

    @triton.jit
    def _one_minus_power(log_base, exponent):
        """``1 - base ** exponent`` without the cancellation near 1: ``-expm1(exponent * log_base)``,
        by Kahan's ``(u - 1) x / log(u)`` where ``u = exp(x)`` is near 1 (Triton has no ``expm1``)
        and plainly ``1 - u`` elsewhere, where nothing cancels and ``u`` may underflow to 0 (for
        beta 0.9 from step 830 or so: ``log(0)`` there made the step infinite)."""
        x = exponent * log_base
        u = tl.exp(x)
        near_one = tl.abs(x) < 0.5
        safe = tl.where(near_one & (u != 1.0), u, 0.5)  # keeps log(u) finite and non-zero
        kahan = tl.where(u == 1.0, x, (safe - 1.0) * x / tl.log(safe))
        return -tl.where(near_one, kahan, u - 1.0)

    @triton.jit
    def _apply_update(
        param_ptr,
        grad_ptr,
        rms_ptr,
        momentum_ptr,
        partial_ptr,
        start_ptr,
        length_ptr,
        segment_ptr,
        first_ptr,
        count_ptr,
        group_ptr,
        hyper_ptr,
        steps_ptr,
        BLOCK: tl.constexpr,
        PARTIALS: tl.constexpr,
        HYPER: tl.constexpr,
    ):
        """DreamerV3's update of one block: clip by the parameter's norm, RMS and momentum with
        bias corrections, warm-up; the arithmetic of ``capturable_optimizer.optimizer_step``."""
        block = tl.program_id(0)
        start = tl.load(start_ptr + block)
        length = tl.load(length_ptr + block)
        segment = tl.load(segment_ptr + block)
        first = tl.load(first_ptr + segment)
        count = tl.load(count_ptr + segment)
        group = tl.load(group_ptr + segment)
        parts = tl.arange(0, PARTIALS)
        partials = partial_ptr + 2 * (first + parts)
        grad_squares = tl.sum(tl.load(partials, mask=parts < count, other=0.0), 0)
        param_squares = tl.sum(tl.load(partials + 1, mask=parts < count, other=0.0), 0)
        hyper = hyper_ptr + group * HYPER
        lr = tl.load(hyper)
        warmup_steps = tl.load(hyper + 1)
        beta1 = tl.load(hyper + 2)
        rest1 = tl.load(hyper + 3)
        log_beta1 = tl.load(hyper + 4)
        beta2 = tl.load(hyper + 5)
        rest2 = tl.load(hyper + 6)
        log_beta2 = tl.load(hyper + 7)
        eps = tl.load(hyper + 8)
        agc = tl.load(hyper + 9)
        parameter_norm_min = tl.load(hyper + 10)
        step = tl.load(steps_ptr + group)

        maximum_norm = tl.maximum(tl.sqrt(param_squares), parameter_norm_min) * agc
        # (the floor only keeps 0 / 0 out where agc is 0 and a gradient is all zeros)
        clip = maximum_norm / tl.maximum(tl.maximum(tl.sqrt(grad_squares), maximum_norm), 1e-30)
        clip = tl.where(agc > 0.0, clip, 1.0)
        warmup = tl.where(warmup_steps > 0.0, tl.minimum((step - 1.0) / warmup_steps, 1.0), 1.0)
        rms_correction = _one_minus_power(log_beta2, step)
        step_size = -(lr * warmup) / _one_minus_power(log_beta1, step)

        offsets = start + tl.arange(0, BLOCK)
        inside = tl.arange(0, BLOCK) < length
        grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0) * clip
        rms = tl.load(rms_ptr + offsets, mask=inside, other=0.0)
        momentum = tl.load(momentum_ptr + offsets, mask=inside, other=0.0)
        param = tl.load(param_ptr + offsets, mask=inside, other=0.0)
        rms = rms * beta2 + rest2 * grad * grad
        normalized = grad / (tl.sqrt(rms / rms_correction) + eps)
        momentum = momentum * beta1 + rest1 * normalized
        tl.store(rms_ptr + offsets, rms, mask=inside)
        tl.store(momentum_ptr + offsets, momentum, mask=inside)
        tl.store(param_ptr + offsets, param + momentum * step_size, mask=inside)
