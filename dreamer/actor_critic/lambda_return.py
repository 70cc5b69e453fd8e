"""DreamerV3's two TD(lambda) returns, each one Triton kernel instead of a loop over time.

An update computes lambda-returns twice:

* the actor's, over the imagined steps (:func:`dream_lambda_returns`): ``R_t = r_t + gamma c_t
  ((1 - lambda) v_t + lambda R_{t+1})`` from the last value ``R_H = v_{H-1}``; the actor's
  gradient runs back through it into rewards, values and continuations;
* the replay critic's, over the replayed sequence (:func:`replay_lambda_returns`), bootstrapped
  from each state's first imagined return and cut where an episode ends; a target, no gradient.

TorchRL computes both with a Python loop over time (``DreamerV3ActorLoss.lambda_target``, and
``td_lambda_return_estimate`` for the replay, whose vectorised form sizes trajectories on the host
and so cannot run in a CUDA graph): 7 kernels per imagined step forward and 6 backward, and 12
per replayed step. At 16x64 that was about 950 of an update's 5,553 kernels and 1.6 ms of its
one-stream time, the replay's loop on the critical path between the actor-critic branch and the
backward pass (docs/benchmarks.md). Every row's recursion is independent, so here one program
walks the time axis for a block of rows, in registers.

The maths is TorchRL's, in float32 (``tests/test_lambda_return.py`` runs the kernels through
Triton's interpreter against TorchRL's loops, values and gradients). Off CUDA, or with the fused
kernels switched off (:func:`~dreamer.world_model.fused_ops.use_fused`), the torch code runs.
Host side: no syncs (``gamma``/``lambda`` of the actor's estimator are device tensors, read by the
kernel), so both can be captured in a CUDA graph after one warm-up call that compiles them.
"""

from __future__ import annotations

import torch
from torchrl.objectives.value.functional import (
    td_lambda_return_estimate,
    vec_td_lambda_return_estimate,
)

from dreamer.world_model.fused_ops import triton, use_fused

if triton is not None:
    import triton.language as tl

# Rows per program: each program keeps one running return per row.
ROWS_BLOCK = 128


if triton is not None:

    @triton.jit
    def _dream_forward_kernel(reward, value, cont, out, gamma_ptr, lmbda_ptr, rows, r_sn, r_st, v_sn,
                              v_st, c_sn, c_st, STEPS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = row < rows
        gamma = tl.load(gamma_ptr).to(tl.float32)
        lmbda = tl.load(lmbda_ptr).to(tl.float32)
        following = tl.load(value + row * v_sn + (STEPS - 1) * v_st, mask=mask).to(tl.float32)
        for k in range(STEPS):
            t = STEPS - 1 - k
            r = tl.load(reward + row * r_sn + t * r_st, mask=mask).to(tl.float32)
            v = tl.load(value + row * v_sn + t * v_st, mask=mask).to(tl.float32)
            c = tl.load(cont + row * c_sn + t * c_st, mask=mask).to(tl.float32)
            following = r + gamma * c * ((1.0 - lmbda) * v + lmbda * following)
            tl.store(out + row * STEPS + t, following.to(out.dtype.element_ty), mask=mask)

    @triton.jit
    def _dream_backward_kernel(value, cont, out, grad_out, grad_reward, grad_value, grad_cont,
                               gamma_ptr, lmbda_ptr, rows, v_sn, v_st, c_sn, c_st, g_sn, g_st,
                               STEPS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = row < rows
        gamma = tl.load(gamma_ptr).to(tl.float32)
        lmbda = tl.load(lmbda_ptr).to(tl.float32)
        carried = tl.zeros([BLOCK], dtype=tl.float32)  # dR_t reaching R_t through R_{t-1}
        for t in range(STEPS):
            v = tl.load(value + row * v_sn + t * v_st, mask=mask).to(tl.float32)
            c = tl.load(cont + row * c_sn + t * c_st, mask=mask).to(tl.float32)
            grad = tl.load(grad_out + row * g_sn + t * g_st, mask=mask).to(tl.float32) + carried
            if t < STEPS - 1:
                following = tl.load(out + row * STEPS + t + 1, mask=mask).to(tl.float32)
            else:  # R_H is the last value itself
                following = v
            grad_v = grad * gamma * c * (1.0 - lmbda)
            carried = grad * gamma * c * lmbda
            if t == STEPS - 1:
                grad_v += carried
            index = row * STEPS + t
            tl.store(grad_reward + index, grad.to(grad_reward.dtype.element_ty), mask=mask)
            tl.store(grad_value + index, grad_v.to(grad_value.dtype.element_ty), mask=mask)
            grad_c = grad * gamma * ((1.0 - lmbda) * v + lmbda * following)
            tl.store(grad_cont + index, grad_c.to(grad_cont.dtype.element_ty), mask=mask)

    @triton.jit
    def _replay_kernel(reward, done, terminated, bootstrap, out, gamma, lmbda, rows, r_sn, r_st,
                       d_sn, d_st, e_sn, e_st, b_sn, b_st, STEPS: tl.constexpr,
                       BLOCK: tl.constexpr):  # fmt: skip
        row = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = row < rows
        last = STEPS - 1  # returns for steps 0 .. STEPS - 2, from the entries at 1 .. STEPS - 1
        end = tl.load(terminated + row * e_sn + last * e_st, mask=mask).to(tl.float32)
        value = tl.load(bootstrap + row * b_sn + last * b_st, mask=mask).to(tl.float32)
        following = value * (1.0 - end)
        for k in range(1, STEPS):  # (a bound computed from STEPS fails in some interpreters)
            t = STEPS - k  # the entry read; the return is written at t - 1
            end = tl.load(terminated + row * e_sn + t * e_st, mask=mask).to(tl.float32)
            value = tl.load(bootstrap + row * b_sn + t * b_st, mask=mask).to(tl.float32)
            value = value * (1.0 - end)
            cut = tl.load(done + row * d_sn + t * d_st, mask=mask).to(tl.float32)
            r = tl.load(reward + row * r_sn + t * r_st, mask=mask).to(tl.float32)
            following = following * (1.0 - cut) + value * cut
            following = r + gamma * ((1.0 - lmbda) * value + lmbda * following)
            tl.store(out + row * last + t - 1, following.to(out.dtype.element_ty), mask=mask)


def _rows_by_time(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``x`` ``[..., steps]`` or ``[..., steps, 1]`` as a 2-D ``[rows, steps]`` view (a copy only
    when the leading dimensions cannot be merged)."""
    if x.dim() >= 2 and x.shape[-1] == 1 and x.shape[-2] == steps:
        x = x.squeeze(-1)
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    return x.reshape(-1, steps)


class _DreamReturns(torch.autograd.Function):
    @staticmethod
    def forward(ctx, reward, value, continuation, gamma, lmbda):
        steps = reward.shape[-2]
        r, v, c = (_rows_by_time(x, steps) for x in (reward, value, continuation))
        rows = r.shape[0]
        # Kept in float32 for the backward pass, which reads each step's following return.
        returns = torch.empty(rows, steps, dtype=torch.float32, device=r.device)
        if rows:
            _dream_forward_kernel[(triton.cdiv(rows, ROWS_BLOCK),)](
                r, v, c, returns, gamma, lmbda, rows, *r.stride(), *v.stride(), *c.stride(),
                STEPS=steps, BLOCK=ROWS_BLOCK,
            )  # fmt: skip
        ctx.save_for_backward(v, c, returns, gamma, lmbda)
        ctx.shapes = [(x.shape, x.dtype) for x in (reward, value, continuation)]
        dtype = torch.promote_types(torch.promote_types(r.dtype, v.dtype), c.dtype)
        return returns.to(dtype).view(reward.shape)

    @staticmethod
    def backward(ctx, grad):
        v, c, out, gamma, lmbda = ctx.saved_tensors
        rows, steps = out.shape
        g = _rows_by_time(grad, steps)
        grads = [torch.empty(rows, steps, dtype=d, device=out.device) for _, d in ctx.shapes]
        if rows:
            _dream_backward_kernel[(triton.cdiv(rows, ROWS_BLOCK),)](
                v, c, out, g, *grads, gamma, lmbda, rows, *v.stride(), *c.stride(), *g.stride(),
                STEPS=steps, BLOCK=ROWS_BLOCK,
            )  # fmt: skip
        grads = [g.view(shape) for g, (shape, _) in zip(grads, ctx.shapes, strict=True)]
        return (*grads, None, None)


def dream_lambda_returns(
    reward: torch.Tensor,
    value: torch.Tensor,
    continuation: torch.Tensor,
    gamma: torch.Tensor,
    lmbda: torch.Tensor,
) -> torch.Tensor:
    """The actor's lambda-returns ``[..., H, 1]`` of an imagined rollout by the kernel,
    differentiable in ``reward``, ``value`` and ``continuation`` (each ``[..., H, 1]``, any
    strides). Only where :func:`~dreamer.world_model.fused_ops.use_fused` holds for the inputs;
    elsewhere TorchRL's loop computes them (:class:`~dreamer.actor_critic.losses.DreamerActorLoss`).

    ``gamma`` and ``lmbda`` are 0-d tensors on the rollout's device (the value estimator's)."""
    if not (reward.shape == value.shape == continuation.shape and reward.shape[-1:] == (1,)):
        raise ValueError(
            f"reward {tuple(reward.shape)}, value {tuple(value.shape)} and continuation "
            f"{tuple(continuation.shape)} must share one [..., H, 1] shape"
        )
    return _DreamReturns.apply(reward, value, continuation, gamma.detach(), lmbda.detach())


def replay_lambda_returns(
    reward: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
    bootstrap: torch.Tensor,
    gamma: float,
    lmbda: float,
) -> torch.Tensor:
    """The replay critic's lambda-return targets ``[B, T - 1]`` (no gradient).

    As TorchRL's ``DreamerV3ValueLoss.replay_value_loss`` computes them: element ``k`` is the return
    of replayed state ``k`` from the rewards and ``bootstrap`` values (each state's first imagined
    return) at ``k + 1`` on, with the bootstrap zeroed where ``terminated`` and the recursion
    restarted from it where ``done``. Inputs ``[B, T]`` or ``[B, T, 1]``.
    """
    steps = reward.shape[1]
    if not use_fused(reward, done, terminated, bootstrap):
        r, d, e, b = (
            x.detach().reshape(-1, steps, 1) for x in (reward, done, terminated, bootstrap)
        )
        capturing = r.is_cuda and torch.cuda.is_current_stream_capturing()
        # TorchRL's choice: its vectorised form sizes trajectories on the host.
        estimate = td_lambda_return_estimate if capturing else vec_td_lambda_return_estimate
        returns = estimate(
            gamma=gamma,
            lmbda=lmbda,
            next_state_value=b[:, 1:],
            reward=r[:, 1:],
            done=d[:, 1:],
            terminated=e[:, 1:],
        )
        return returns.squeeze(-1)
    r, d, e, b = (_rows_by_time(x.detach(), steps) for x in (reward, done, terminated, bootstrap))
    rows = r.shape[0]
    out = torch.empty(rows, steps - 1, dtype=torch.promote_types(r.dtype, b.dtype), device=r.device)
    if rows and steps > 1:
        _replay_kernel[(triton.cdiv(rows, ROWS_BLOCK),)](
            r, d, e, b, out, float(gamma), float(lmbda), rows, *r.stride(), *d.stride(),
            *e.stride(), *b.stride(), STEPS=steps, BLOCK=ROWS_BLOCK,
        )  # fmt: skip
    return out
