"""The actor's bounded tanh-normal sample as one Triton kernel forward and one backward.

At every imagined step the actor turns its MLP's output ``[N, 2 A]`` into an action: the std
bounds (:class:`~dreamer.actor_critic.actor.BoundedNormalParams`), then TorchRL's ``TanhNormal``
``rsample`` (``loc + eps * scale``, a clamped tanh, and, inside a CUDA graph, where TanhNormal
cannot check its bounds on the host, an affine map to ``[low, high]`` whose centre and half-width
it recomputes on every call), then the world model's action scaling ``a / max(|a|, 1)``
(:func:`~dreamer.world_model.rssm_step.action_features`): element-wise kernels on ``[N, A]``
values at every step, on the imagination's critical path. Here it is one kernel each way (plus
the noise draw); the update lost 24 kernels per imagined step with it (docs/benchmarks.md).

The maths is TorchRL's (``tests/test_fused_ops.py`` runs the kernels through Triton's
interpreter against it; ``tests/test_imagine.py`` the whole dream). The noise is drawn by the
caller as ``Normal.rsample`` draws it (:func:`action_noise`), so a dream consumes the random
stream exactly as TorchRL's rollout does. The tanh's gradient is ``1 - y^2`` of the clamped
output, as TorchRL's ``SafeTanhTransform`` defines it, and the std bounds use ``sigmoid(x + 2)``.
Kernel rules are those of :mod:`dreamer.world_model.fused_ops` (float32 maths, one rounding to
the tensors' dtype, no syncs, only long-stable ``triton.language``; tanh as ``2 sigmoid(2x) - 1``).
"""

from __future__ import annotations

import torch

from dreamer.world_model.fused_ops import triton

if triton is not None:
    import triton.language as tl

# Elements of the [N, A] action per program. (No kernel argument may be called ``params``: the
# name clashes with Triton 3.6's argument binder, which the interpreter does not run.)
ACTION_BLOCK = 1024
# BoundedNormalParams' shift of the raw std before its sigmoid (DreamerV3's value).
STD_SHIFT = 2.0


if triton is not None:

    @triton.jit
    def _action_inputs(features, noise, low, high, total, actions, p_s0, p_s1, n_s0, n_s1,
                       min_std, std_range, std_shift, limit, BLOCK: tl.constexpr):  # fmt: skip
        """This program's elements of ``[N, A]``: flat index, mask, row, column, the sigmoid of
        the shifted raw std, the noise, the bounds' centre and half-width, and the clamped tanh
        ``y`` of the normal sample, in float32."""
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < total
        row, column = index // actions, index % actions
        own = features + row * p_s0 + column * p_s1
        loc = tl.load(own, mask=mask, other=0.0).to(tl.float32)
        raw = tl.load(own + actions * p_s1, mask=mask, other=0.0).to(tl.float32)
        eps = tl.load(noise + row * n_s0 + column * n_s1, mask=mask, other=0.0).to(tl.float32)
        lo = tl.load(low + column, mask=mask, other=-1.0).to(tl.float32)
        hi = tl.load(high + column, mask=mask, other=1.0).to(tl.float32)
        squashed = tl.sigmoid(raw + std_shift)
        x = loc + eps * (std_range * squashed + min_std)
        y = 2.0 * tl.sigmoid(2.0 * x) - 1.0
        y = tl.minimum(tl.maximum(y, -limit), limit)
        return index, mask, row, column, squashed, eps, (hi + lo) / 2.0, (hi - lo) / 2.0, y

    @triton.jit
    def _action_forward_kernel(features, noise, low, high, scale, action, scaled, total, actions,
                               p_s0, p_s1, n_s0, n_s1, min_std, std_range, std_shift, limit,
                               BLOCK: tl.constexpr):  # fmt: skip
        index, mask, _, _, squashed, _, centre, half, y = _action_inputs(
            features, noise, low, high, total, actions, p_s0, p_s1, n_s0, n_s1, min_std,
            std_range, std_shift, limit, BLOCK,
        )  # fmt: skip
        a = centre + half * y
        dtype = action.dtype.element_ty
        tl.store(scale + index, (std_range * squashed + min_std).to(dtype), mask=mask)
        tl.store(action + index, a.to(dtype), mask=mask)
        tl.store(scaled + index, (a / tl.maximum(tl.abs(a), 1.0)).to(dtype), mask=mask)

    @triton.jit
    def _action_backward_kernel(features, noise, low, high, grad_scale, grad_action, grad_scaled,
                                grad_params, total, actions, p_s0, p_s1, n_s0, n_s1, g_s0,
                                min_std, std_range, std_shift, limit, HAS_SCALE: tl.constexpr,
                                HAS_ACTION: tl.constexpr, HAS_SCALED: tl.constexpr,
                                BLOCK: tl.constexpr):  # fmt: skip
        index, mask, row, column, squashed, eps, centre, half, y = _action_inputs(
            features, noise, low, high, total, actions, p_s0, p_s1, n_s0, n_s1, min_std,
            std_range, std_shift, limit, BLOCK,
        )  # fmt: skip
        grad_a = tl.zeros_like(y)
        if HAS_ACTION:
            grad_a += tl.load(grad_action + index, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALED:  # a / max(|a|, 1) with the denominator held constant, as torch's detach
            g = tl.load(grad_scaled + index, mask=mask, other=0.0).to(tl.float32)
            grad_a += g / tl.maximum(tl.abs(centre + half * y), 1.0)
        grad_x = grad_a * half * (1.0 - y * y)
        grad_std = grad_x * eps
        if HAS_SCALE:
            grad_std += tl.load(grad_scale + index, mask=mask, other=0.0).to(tl.float32)
        grad_raw = grad_std * std_range * squashed * (1.0 - squashed)
        dst = grad_params + row * g_s0 + column
        dtype = grad_params.dtype.element_ty
        tl.store(dst, grad_x.to(dtype), mask=mask)
        tl.store(dst + actions, grad_raw.to(dtype), mask=mask)


def tanh_limit(dtype: torch.dtype) -> float:
    """Where TorchRL's ``SafeTanhTransform`` clamps the tanh: ``1 - finfo(dtype).resolution``."""
    return 1.0 - torch.finfo(dtype).resolution


class _BoundedTanhNormalSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, params, noise, low, high, min_std, max_std):
        rows, actions = noise.shape
        scale, action, scaled = (
            torch.empty(noise.shape, dtype=params.dtype, device=params.device) for _ in range(3)
        )
        std_range, limit = max_std - min_std, tanh_limit(params.dtype)
        ctx.constants = (min_std, std_range, STD_SHIFT, limit)
        total = rows * actions
        if total:
            _action_forward_kernel[(triton.cdiv(total, ACTION_BLOCK),)](
                params, noise, low, high, scale, action, scaled, total, actions,
                *params.stride(), *noise.stride(), *ctx.constants, BLOCK=ACTION_BLOCK,
            )  # fmt: skip
        ctx.save_for_backward(params, noise, low, high)
        # Unread outputs' gradients stay None (the dream's scale): no zeros to add.
        ctx.set_materialize_grads(False)
        return scale, action, scaled

    @staticmethod
    def backward(ctx, grad_scale, grad_action, grad_scaled):
        params, noise, low, high = ctx.saved_tensors
        grad_params = torch.empty(params.shape, dtype=params.dtype, device=params.device)
        grads = [g if g is None else g.contiguous() for g in (grad_scale, grad_action, grad_scaled)]
        present = [g is not None for g in grads]
        if not any(present):
            return None, None, None, None, None, None
        rows, actions = noise.shape
        total = rows * actions
        if total:
            stand_in = next(g for g in grads if g is not None)
            _action_backward_kernel[(triton.cdiv(total, ACTION_BLOCK),)](
                params, noise, low, high, *(stand_in if g is None else g for g in grads),
                grad_params, total, actions, *params.stride(), *noise.stride(),
                grad_params.stride(0), *ctx.constants, HAS_SCALE=present[0],
                HAS_ACTION=present[1], HAS_SCALED=present[2], BLOCK=ACTION_BLOCK,
            )  # fmt: skip
        return grad_params, None, None, None, None, None


def action_noise(loc: torch.Tensor) -> torch.Tensor:
    """Standard-normal draws shaped like ``loc``, made as ``torch.distributions.Normal.rsample``
    makes its own (same dtype, same call), so the random stream advances as in TorchRL."""
    return torch.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()


def sample_bounded_action(
    params: torch.Tensor,
    noise: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    min_std: float,
    max_std: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The actor's reparameterised action from its MLP output, in one kernel each way.

    Args:
        params: ``[N, 2 A]``: ``loc`` then the raw std (any strides).
        noise: ``[N, A]`` standard-normal draws (:func:`action_noise`).
        low, high: ``[A]`` action bounds (contiguous).
        min_std, max_std: the std bounds: ``std = min + (max - min) sigmoid(raw + 2)``.

    Returns:
        ``scale``, ``action`` and the world model's scaled action ``action / max(|action|, 1)``,
        each ``[N, A]`` in ``params``' dtype, where ``action`` is TanhNormal's sample
        ``centre + half_width * clamp(tanh(loc + noise * scale))``. ``loc`` is
        ``params[:, :A]``. Gradients reach ``params`` only.
    """
    rows, actions = noise.shape
    if params.shape != (rows, 2 * actions) or low.shape != (actions,) or high.shape != (actions,):
        raise ValueError(
            f"params {tuple(params.shape)}, noise {tuple(noise.shape)} and bounds "
            f"{tuple(low.shape)}/{tuple(high.shape)} do not fit"
        )
    low, high = low.contiguous(), high.contiguous()
    return _BoundedTanhNormalSample.apply(params, noise, low, high, float(min_std), float(max_std))
