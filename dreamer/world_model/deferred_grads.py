"""Weight gradients of a recurrent loop as one matmul per layer, instead of one per step.

Autograd gives a layer used at every step of a ``T``-step loop ``T`` weight-gradient matmuls,
``T`` bias reductions and ``2 (T - 1)`` accumulation adds. On a GPU, where the learner's time is
set by its number of kernels (docs/benchmarks.md), that is most of the kernels a filter step's
backward launches that do not carry the recurrence. :class:`DeferredLayers` keeps the
recurrence's own gradient (``dx = g W``) at every step, records each step's input ``x_t`` and
output gradient ``g_t``, and computes ``dW = [g_1..g_T]^T [x_1..x_T]`` and ``db = sum g`` once,
after the loop's backward pass has finished.

How it is ordered: :meth:`DeferredLayers.anchor` passes the loop's initial tensors through an
identity autograd node that also takes the layers' parameters. Every step depends on the loop's
initial tensors, so autograd runs that node's backward only after every step's backward; that
backward is where the parameter gradients are computed and handed to autograd (which adds them to
``.grad`` like any other contribution). Steps whose output never reaches the loss contribute
nothing, as in plain autograd. ``tests/test_deferred_grads.py`` checks the gradients against
plain autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dreamer.world_model.skinny_matmul import skinny_bmm, skinny_matmul, use_skinny

# Deferring keeps every step's output gradient until the loop's backward ends (plus one
# concatenated copy). With few rows per step that is small and the per-step kernels it saves are
# launch-bound; with many rows each per-step matmul is efficient on its own and the kept
# gradients cost gigabytes (256x64 imagination, 16,384 rows, ran out of an H100's memory).
MAX_DEFERRED_ROWS = 4096


def worth_deferring(rows: int, weights: list[tuple[torch.Tensor, torch.Tensor | None]]) -> bool:
    """Whether a loop over ``rows`` rows per step should defer the gradients of ``weights``:
    only when gradients are being recorded, some of the weights want one (TorchRL's actor loss
    holds the world model out of the imagination's graph), and the rows are few
    (:data:`MAX_DEFERRED_ROWS`)."""
    wanted = any(w.requires_grad for pair in weights for w in pair if w is not None)
    return torch.is_grad_enabled() and wanted and rows <= MAX_DEFERRED_ROWS


@dataclass
class _Layer:
    """One deferred layer's per-step inputs and output gradients (matched by call index)."""

    weight: torch.Tensor  # the parameter (or a view of one) whose gradient is deferred
    bias: torch.Tensor | None
    compute_weight: torch.Tensor  # detached, in the compute dtype
    compute_bias: torch.Tensor | None
    inputs: list[torch.Tensor] = field(default_factory=list)
    grads: dict[int, torch.Tensor] = field(default_factory=dict)

    def gradients(self) -> list[torch.Tensor | None]:
        """``dW`` (and ``db``) from every step that received a gradient, in the parameters' dtype."""
        inputs, grads = self.inputs, self.grads
        self.inputs, self.grads = [], {}
        steps = sorted(grads)
        if not steps:
            return [None] if self.bias is None else [None, None]
        x = torch.cat([inputs[i] for i in steps], -2)
        g = torch.cat([grads[i] for i in steps], -2)
        if self.compute_weight.dim() == 3:  # block-linear: dW[b] = x[b]^T g[b]
            grad_weight = torch.bmm(x.transpose(1, 2), g)
        else:  # dW = g^T x
            grad_weight = g.t() @ x
        result = [grad_weight.to(self.weight.dtype)]
        if self.bias is not None:
            reduced = g.sum(-2)  # [out] or [blocks, out]
            result.append(reduced.reshape(self.bias.shape).to(self.bias.dtype))
        return result


class _Anchor(torch.autograd.Function):
    """Identity on the loop's initial tensors; its backward computes the deferred gradients."""

    @staticmethod
    def forward(ctx, layers: DeferredLayers, count: int, *tensors_and_params):
        ctx.layers = layers
        return tuple(t.view_as(t) for t in tensors_and_params[:count])

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, *grads, *ctx.layers.parameter_gradients())


class _DeferredMatmul(torch.autograd.Function):
    """``x @ W (+ b)`` whose backward returns ``dx`` and records ``g`` for ``dW`` (and ``db``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: _Layer, block: bool, add_bias: bool):
        weight = layer.compute_weight
        bias = layer.compute_bias if add_bias else None
        x = x.to(weight.dtype)
        if block and use_skinny(x, weight):  # the filter's few rows, as below
            out = skinny_bmm(x, weight, None if bias is None else bias[:, 0])
        elif block:  # [blocks, N, i] @ [blocks, i, o] + bias[blocks, 1, o]
            out = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)
        elif use_skinny(x, weight):  # the filter's few rows: one kernel, not cuBLAS's two
            out = skinny_matmul(x, weight.t(), bias)
        else:
            out = F.linear(x, weight, bias)
        ctx.layer, ctx.block, ctx.index = layer, block, len(layer.inputs)
        # Detached: kept with its grad_fn, the list would tie this node to its own inputs in a
        # reference cycle through autograd's C++ graph, which the garbage collector cannot free.
        layer.inputs.append(x.detach())
        return out

    @staticmethod
    def backward(ctx, grad):
        layer = ctx.layer
        layer.grads[ctx.index] = grad
        weight = layer.compute_weight
        if ctx.block:
            grad_x = block_input_grad(grad, weight)
        elif use_skinny(grad, weight):
            grad_x = skinny_matmul(grad, weight)
        else:
            grad_x = grad @ weight
        return grad_x, None, None, None


def block_input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ W^T`` per block, ``[blocks, N, i]``, stored row-major as ``[N, blocks, i]``.

    A block-linear input is a block-major *view* of row-major ``[N, blocks * i]`` values
    (``rssm_step.block_linear``). Autograd's own ``bmm`` gradient is block-major, so the view's
    backward had to copy it back to rows: one copy per block-linear layer and step, in the
    filter's backward chain (128 at 64 steps). cuBLAS writes the strided layout directly.
    """
    blocks, rows, width = grad.shape[0], grad.shape[1], weight.shape[1]
    out = grad.new_empty(rows, blocks, width).transpose(0, 1)
    if use_skinny(grad, weight):  # the filter's few rows (skinny_matmul), same layout
        return skinny_bmm(grad, weight.transpose(1, 2), out=out)
    return torch.bmm(grad, weight.transpose(1, 2), out=out)


class DeferredLayers:
    """The layers of one loop whose weight gradients are computed once, after the loop.

    Usage: create it with the layers' parameters, pass the loop's initial tensors through
    :meth:`anchor` before the loop, and use :meth:`linear` / :meth:`block_linear` inside it. A
    new instance is needed for every forward pass (it holds that pass's per-step tensors).

    Args:
        weights: ``(weight, bias)`` pairs (``bias`` may be ``None``); a linear weight is
            ``[out, in]``, a block-linear one ``[blocks, in, out]`` with bias ``[blocks * out]``.
        dtype: the compute dtype (bf16 under autocast); default: each weight's own.
        norms: scales of the RMS norms the loop runs (see :meth:`norm_grad`).
    """

    def __init__(
        self,
        weights: list[tuple[torch.Tensor, torch.Tensor | None]],
        dtype: torch.dtype | None = None,
        norms: list[torch.Tensor] = (),
    ):
        # Scales of RMS norms: where the norm runs fused (dreamer.world_model.fused_norm), its
        # steps add their gradients into one float32 buffer, made on first use and handed to
        # autograd by the anchor; elsewhere the norm's own gradient stands. Weights that want no
        # gradient (held out of the graph) are left to the plain path.
        self.norms = {id(w): w for w in norms if w.requires_grad}
        self.norm_buffers: dict[int, torch.Tensor] = {}
        self.layers: dict[int, _Layer] = {}
        for weight, bias in weights:
            if not weight.requires_grad:
                continue
            dtype_ = dtype or weight.dtype
            compute_bias = None
            if bias is not None:
                compute_bias = bias.detach().to(dtype_)
                if weight.dim() == 3:
                    compute_bias = compute_bias.view(weight.shape[0], 1, weight.shape[2])
            self.layers[id(weight)] = _Layer(weight, bias, weight.detach().to(dtype_), compute_bias)
        self.anchored = False

    def anchor(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The loop's initial tensors, unchanged, made the point where the gradients are computed.

        Every tensor the loop starts from must pass through here (every step must depend on at
        least one of them), or a step's gradient could arrive after the parameters' was made.
        """
        if self.anchored:
            raise RuntimeError("DeferredLayers.anchor may be called once per forward pass")
        self.anchored = True
        params = [p for layer in self.layers.values() for p in (layer.weight, layer.bias)]
        params = [p for p in params if p is not None]
        params += list(self.norms.values())
        return _Anchor.apply(self, len(tensors), *tensors, *params)

    def parameter_gradients(self) -> list[torch.Tensor | None]:
        """Every registered parameter's gradient, in :meth:`anchor`'s order (after the loop)."""
        grads = [g for layer in self.layers.values() for g in layer.gradients()]
        for key, weight in self.norms.items():
            buffer = self.norm_buffers.pop(key, None)
            grads.append(None if buffer is None else buffer.to(weight.dtype))
        return grads

    def handles(self, weight: torch.Tensor) -> bool:
        """Whether ``weight``'s gradient is deferred here (registered and wanting one)."""
        return id(weight) in self.layers

    def _layer(self, weight: torch.Tensor) -> _Layer:
        if not self.anchored:
            raise RuntimeError("call DeferredLayers.anchor before using its layers")
        return self.layers[id(weight)]

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` for ``x`` ``[N, in]`` with the registered ``bias``."""
        return _DeferredMatmul.apply(x, self._layer(weight), False, True)

    def norm_grad(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The shared gradient buffer of a registered norm scale (``None`` if not registered)."""
        if id(weight) not in self.norms:
            return None
        if id(weight) not in self.norm_buffers:
            self.norm_buffers[id(weight)] = torch.zeros(weight.shape, device=weight.device)
        return self.norm_buffers[id(weight)]

    def block_linear(
        self, x: torch.Tensor, weight: torch.Tensor, add_bias: bool = True
    ) -> torch.Tensor:
        """``baddbmm(bias, x, weight)`` for block-major ``x`` ``[blocks, N, in]``; with
        ``add_bias`` False the caller adds the registered bias (its gradient is still made
        here, from the output's gradient)."""
        return _DeferredMatmul.apply(x, self._layer(weight), True, add_bias)


def compute_dtype(like: torch.Tensor) -> torch.dtype | None:
    """The dtype matmuls run in here: autocast's when it is on for ``like``'s device, else None
    (each weight's own)."""
    device_type = like.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
