"""The Triton kernels (fused_ops, fused_sample, fused_action) compute what the torch code does.

The kernels run on the CPU through Triton's interpreter, which must be switched on before Triton
is imported. Other tests import the project (and so Triton) into pytest's process first, so all
kernel checks run in one subprocess that starts with ``TRITON_INTERPRET=1`` (this file, run as a
script); each pytest test reads its case's outcome. Tolerances: float32 values and gradients
``rtol=1e-5, atol=1e-6`` against the torch code (the kernels round differently, e.g. tanh as
``2 sigmoid(2x) - 1``); bfloat16 ones ``rtol=1.6e-2, atol=1e-5`` (one or two bf16 roundings)
against the torch code on the same inputs in float32, which is what the kernels compute before
their single rounding. Sample indices must equal torch's ``argmax`` exactly.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import check_cases

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-5}}  # fmt: skip
UPDATE_BIAS = -1.0


def _reference_gru(gates: torch.Tensor, belief: torch.Tensor) -> torch.Tensor:
    """``gru_step``'s torch gate arithmetic on block-major gates ``[blocks, N, 3 g]``."""
    grouped = belief.unflatten(-1, (gates.shape[0], -1))
    reset, candidate, update = gates.transpose(0, 1).unflatten(-1, (3, -1)).unbind(-2)
    candidate = (reset.sigmoid() * candidate).tanh()
    update = (update + UPDATE_BIAS).sigmoid()
    return torch.addcmul(grouped, update, candidate - grouped).flatten(-2)


def _value_and_grads(fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """``fn(*inputs)`` and the gradients of a fixed random weighting of it."""
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad((weight * out.float()).sum(), inputs)
    return [out.detach(), *grads]


def _leaf(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype).detach().requires_grad_()


def check_gru(
    rows: int,
    blocks: int,
    group: int,
    dtype: torch.dtype,
    layout: str,
    belief_dtype=None,
    bias: bool = False,
    carry: bool = False,
) -> None:
    """``layout``: ``dense`` inputs, or gates as a transposed view and the belief as every other
    column of a wider tensor (``strided``) or as one row expanded (``expanded``, the filter's
    ``h0``). ``belief_dtype`` (default ``dtype``): bf16 autocast gives bf16 gates and a float32
    belief. ``bias``: the gate bias added by the kernel (float32, as the parameter is).
    ``carry``: :func:`gru_gate_update_carried` with some rows kept and some restarted, the start
    values a strided view (the filter's), checked with their gradient."""
    from dreamer.world_model.fused_ops import gru_gate_update, gru_gate_update_carried

    torch.manual_seed(0)
    dense = layout == "dense"
    gates = torch.randn(*((blocks, rows) if dense else (rows, blocks)), 3 * group) * 2
    width = {"dense": blocks * group, "strided": 2 * blocks * group, "expanded": blocks * group}
    belief = torch.randn(1 if layout == "expanded" else rows, width[layout])
    gates, belief = _leaf(gates, dtype), _leaf(belief, belief_dtype or dtype)
    out_dtype = torch.promote_types(gates.dtype, belief.dtype)
    leaves = [gates, belief]
    if bias:
        leaves.append(_leaf(torch.randn(blocks * 3 * group), torch.float32))
    keep = (torch.arange(rows) % 3 != 0).to(out_dtype).unsqueeze(-1)
    if carry:  # every other row of a [rows, 2, width] tensor, as unbind(1) leaves it
        leaves.append(_leaf(torch.randn(rows, 2, blocks * group), out_dtype))

    def views(g, b):
        b = b[:, ::2] if layout == "strided" else b.expand(rows, -1)
        return (g if dense else g.transpose(0, 1)), b

    def fused(g, b, *extra):
        gate_bias = extra[0] if bias else None
        if carry:
            start = extra[-1][:, 1]
            out, carried = gru_gate_update_carried(
                *views(g, b), UPDATE_BIAS, gate_bias, keep, start
            )
            return torch.stack([out, carried])
        return gru_gate_update(*views(g, b), UPDATE_BIAS, gate_bias)

    def reference(g, b, *extra):
        g, b = views(g.float(), b.float())
        if bias:
            g = g + extra[0].view(blocks, 1, -1)
        out = _reference_gru(g, b)
        if carry:  # in float32 too: the kernel rounds the carried value once
            out = torch.stack([out, torch.addcmul(extra[-1][:, 1].float(), out, keep.float())])
        return out.to(out_dtype)

    got = _value_and_grads(fused, *leaves)
    expected = _value_and_grads(reference, *leaves)
    dtypes = [out_dtype, *(leaf.dtype for leaf in leaves)]
    assert [x.dtype for x in got] == dtypes
    if bias and dtype == torch.bfloat16:
        # The bias gradient is the row sum of the bf16 gate gradients (as autocast's baddbmm
        # makes it): checked against that sum, not against a float32 chain, which differs by
        # the roundings of every summand.
        row_sum = views(got[1], belief)[0].float().sum(1).flatten()
        torch.testing.assert_close(got[3], row_sum, rtol=1e-5, atol=1e-5)
        got, expected = got[:3] + got[4:], expected[:3] + expected[4:]
    names = ["value", "d gates", "d belief", *(["d bias"] * bias), *(["d start"] * carry)]
    if bias and dtype == torch.bfloat16:
        names.remove("d bias")
    for name, g, e in zip(names, got, expected, strict=True):
        torch.testing.assert_close(g.float(), e.float(), **TOLERANCE[g.dtype], msg=name)


def check_gru_split(
    rows: int, blocks: int, group: int, dtype: torch.dtype, copy_dtype: torch.dtype, unread: str
) -> None:
    """:func:`gru_gate_update_carried` with ``copy_dtype`` (a float32 belief, as the filter carries it): its five
    outputs (next belief, its copy in ``copy_dtype``, the carried belief and two copies of it)
    against the torch maths, and the gradients with each output read by its own weighting,
    the outputs named in ``unread`` not at all (their gradient stays None; ``carried`` names all
    three carried ones, as at the filter's last step). The next belief is read through a stack,
    so its gradient arrives as a strided slice, as in the filter."""
    from dreamer.world_model.fused_ops import gru_gate_update_carried

    torch.manual_seed(2)
    width = blocks * group
    gates = _leaf(torch.randn(blocks, rows, 3 * group) * 2, dtype)
    belief = _leaf(torch.randn(rows, width), torch.float32)
    start = _leaf(torch.randn(rows, 2, width), torch.float32)
    keep = (torch.arange(rows) % 3 != 0).float().unsqueeze(-1)
    names = ("out", "copy", "carried", "own", "proj")
    read = [n not in unread and not (n in ("own", "proj") and "carried" in unread) for n in names]

    def objective(outputs):
        stacked = torch.stack([outputs[0], torch.zeros_like(outputs[0])], 1)  # a strided slice
        outputs = [stacked, *outputs[1:]]
        generator = torch.Generator().manual_seed(9)
        weights = [torch.randn(o.shape, generator=generator) for o in outputs]
        return sum(
            (w * o.float()).sum() for w, o, r in zip(weights, outputs, read, strict=True) if r
        )

    got = gru_gate_update_carried(gates, belief, UPDATE_BIAS, None, keep, start[:, 1], copy_dtype)
    out = _reference_gru(gates.float(), belief)
    carried = torch.addcmul(start[:, 1], out, keep)
    expected = [out, out.to(copy_dtype), carried, carried.to(copy_dtype), carried.to(copy_dtype)]
    assert [g.dtype for g in got] == [e.dtype for e in expected]
    leaves = [gates, belief, start]
    got_grads = torch.autograd.grad(objective(got), leaves, allow_unused=True)
    expected_grads = torch.autograd.grad(objective(expected), leaves, allow_unused=True)
    tolerance = TOLERANCE[torch.bfloat16 if torch.bfloat16 in (dtype, copy_dtype) else dtype]
    for name, g, e in zip(names, got, expected, strict=True):
        torch.testing.assert_close(g.float(), e.float(), **tolerance, msg=name)
    for name, g, e in zip(
        ("d gates", "d belief", "d start"), got_grads, expected_grads, strict=True
    ):
        if e is None:  # nothing carried was read: no gradient reaches the start values
            assert g is None or not g.any(), name
            continue
        torch.testing.assert_close(g.float(), e.float(), **tolerance, msg=name)


def check_sample_split(shape: tuple[int, int, int], dtype, copy_dtype, unread: str) -> None:
    """:func:`fused_sample_carried` with ``copy_dtype``: the sample, the carried state in that dtype and the logits'
    copy against the torch code, and the gradients with each output read by its own weighting
    through a stack (strided slices), those named in ``unread`` not at all."""
    from dreamer.world_model.fused_sample import fused_sample_carried
    from dreamer.world_model.sampling import straight_through_sample

    torch.manual_seed(3)
    logits = _leaf(torch.randn(shape) * 3, dtype)
    noise = torch.empty(shape[0], 3, *shape[1:]).exponential_()[:, 1]
    keep = (torch.arange(shape[0]) % 3 != 0).float().unsqueeze(-1)
    start = _leaf(torch.randn(shape[0], 2, shape[1] * shape[2]), torch.float32)
    names = ("sample", "carried", "logits")
    read = [n not in unread for n in names]

    def objective(outputs):
        generator = torch.Generator().manual_seed(9)
        total = 0
        for output, wanted in zip(outputs, read, strict=True):
            stacked = torch.stack([output, torch.zeros_like(output)], 1)[:, 0]
            weight = torch.randn(output.shape, generator=generator)
            total = total + (weight * stacked.float()).sum() * wanted
        return total

    got = fused_sample_carried(logits, 0.01, noise, keep, start[:, 1], copy_dtype)
    # The torch code in float32, which the kernels compute before their one rounding.
    logits32 = _leaf(logits, torch.float32)
    sample = straight_through_sample(logits32, 0.01, noise).flatten(-2)
    # Each output rounded as the kernel's is, so its gradient arrives rounded the same way.
    carried = torch.addcmul(start[:, 1], sample, keep).to(copy_dtype)
    expected = [sample.to(dtype), carried, logits32.to(dtype)]
    assert [g.dtype for g in got] == [dtype, copy_dtype, dtype]
    tolerance = TOLERANCE[torch.bfloat16 if torch.bfloat16 in (dtype, copy_dtype) else dtype]
    for name, g, e in zip(names, got, expected, strict=True):
        torch.testing.assert_close(g.float(), e.float(), **tolerance, msg=name)
    got_grads = torch.autograd.grad(objective(got), [logits, start], allow_unused=True)
    expected_grads = torch.autograd.grad(objective(expected), [logits32, start], allow_unused=True)
    for name, g, e in zip(("d logits", "d start"), got_grads, expected_grads, strict=True):
        if e is None or not e.any():
            assert g is None or not g.any(), name
            continue
        torch.testing.assert_close(g.float(), e, **tolerance, msg=name)


def check_filter_backward_adds_nothing_per_step() -> None:
    """Under bf16 autocast, the filter's backward (kernels forced on for CPU tensors) runs the
    same number of adds and casts at 3 steps as at 6: every tensor a step hands on has one
    reader, so autograd neither adds gradients nor casts bf16 ones between the steps (before
    the split there were about six such kernels per step, in the filter's backward chain)."""
    from test_fast_filter import SIZE, _objective
    from torch.utils._python_dispatch import TorchDispatchMode

    from dreamer.world_model import fused_ops
    from dreamer.world_model.networks import make_rssm_cells
    from dreamer.world_model.rssm import observe_sequence
    from dreamer.world_model.sampling import race_noise

    class CountAddsAndCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__ in ("add.Tensor", "add_.Tensor", "_to_copy.default"):
                if all(not isinstance(a, torch.Tensor) or a.dtype != torch.uint8 for a in args):
                    self.count += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    prior, posterior = make_rssm_cells(3, SIZE)
    counts = {}
    original, fused_ops.use_fused = fused_ops.use_fused, lambda *tensors: True
    try:
        for steps in (3, 6):
            embed = torch.randn(4, steps, SIZE.units, requires_grad=True)
            action = torch.rand(4, steps, 3) * 2 - 1
            is_init = torch.zeros(4, steps, 1, dtype=torch.bool)
            noise = race_noise((2, 4, steps, SIZE.num_categoricals, SIZE.num_classes), action)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                outputs = observe_sequence(prior, posterior, embed, embed, action, is_init, noise)
                objective = _objective({k: v.float() for k, v in outputs.items()})
            for param in [*prior.parameters(), *posterior.parameters()]:
                param.grad = None  # no accumulation into the first run's gradients
            with CountAddsAndCasts() as mode:
                objective.backward()
            counts[steps] = mode.count
    finally:
        fused_ops.use_fused = original
    assert counts[3] == counts[6], counts


def check_sample(
    shape: tuple[int, ...], dtype: torch.dtype, unimix: float, carry: bool = False
) -> None:
    """``carry``: :func:`fused_sample_carried` on ``[M, C, K]`` logits, checked as the torch
    ``addcmul`` of the sample (some rows kept, some restarted) with its start values' gradient."""
    from dreamer.world_model.fused_sample import fused_sample_carried, fused_straight_through_sample
    from dreamer.world_model.sampling import straight_through_sample

    torch.manual_seed(1)
    logits = _leaf(torch.randn(shape) * 3, dtype)
    # The filter's noise: one step of a [B, T, C, K] draw, a non-contiguous view.
    noise = torch.empty(shape[0], 3, *shape[1:]).exponential_()[:, 1]
    if carry:
        keep = (torch.arange(shape[0]) % 3 != 0).to(dtype).unsqueeze(-1)
        start = _leaf(torch.randn(shape[0], 2, shape[1] * shape[2]), dtype)

        # Stacked along dim 1, so each output's gradient arrives as a strided slice (the
        # filter's samples reach the loss through a stack over steps).
        def fused(x, s):
            return torch.stack(fused_sample_carried(x, unimix, noise, keep, s[:, 1]), 1)

        def reference(x, s):  # in float32, as the kernel computes before its one rounding
            sample = straight_through_sample(x.float(), unimix, noise).flatten(-2)
            carried = torch.addcmul(s[:, 1].float(), sample, keep.float())
            return torch.stack([sample, carried], 1).to(dtype)

        got = _value_and_grads(fused, logits, start)
        expected = _value_and_grads(reference, logits, start)
        for name, g, e in zip(("values", "d logits", "d start"), got, expected, strict=True):
            torch.testing.assert_close(g.float(), e.float(), **TOLERANCE[dtype], msg=name)
        return
    got = _value_and_grads(lambda x: fused_straight_through_sample(x, unimix, noise), logits)
    expected = _value_and_grads(
        lambda x: straight_through_sample(x.float(), unimix, noise).to(dtype), logits
    )
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert set(got[0].unique().tolist()) == {0.0, 1.0}, "the forward is the exact one-hot"
    assert torch.equal(got[0].sum(-1), torch.ones(shape[:-1], dtype=dtype))
    assert torch.equal(got[0].argmax(-1), expected[0].argmax(-1)), "index differs from torch's"
    torch.testing.assert_close(got[0].float(), expected[0].float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1].float(), expected[1].float(), **TOLERANCE[dtype])


def check_sample_under_autocast() -> None:
    """Autocast runs torch's softmax in float32, so the fused sample returns float32 there too."""
    from dreamer.world_model.fused_sample import fused_straight_through_sample

    logits = torch.randn(4, 3, 5, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sample = fused_straight_through_sample(logits, 0.01, torch.ones(4, 3, 5))
    assert sample.dtype == torch.float32


def check_filter_uses_the_kernels() -> None:
    """The filter with the kernels wired in (forced on for CPU tensors) matches the step-by-step
    filter on TorchRL's cells, values and gradients (``test_fast_filter``'s tolerances)."""
    from test_fast_filter import _case, _objective, reference_filter

    from dreamer.world_model import fused_ops
    from dreamer.world_model.rssm import observe_sequence

    calls = {"n": 0}

    def forced(*tensors):
        calls["n"] += 1
        return True

    prior, posterior, inputs, noise = _case()
    leaves = [*prior.parameters(), *posterior.parameters(), *inputs[:3]]
    expected = reference_filter(prior, posterior, *inputs, noise)
    expected_grads = torch.autograd.grad(_objective(expected), leaves)
    original, fused_ops.use_fused = fused_ops.use_fused, forced
    try:
        got = observe_sequence(prior, posterior, *inputs, noise=noise)
        got_grads = torch.autograd.grad(_objective(got), leaves)
    finally:
        fused_ops.use_fused = original
    steps = inputs[2].shape[1]
    assert calls["n"] == 2 * steps + 2, calls  # GRU and sample per step; h0 and z0 once each
    # Relative to each output's scale, as for the gradients: the RMS-normed prior head scales
    # the beliefs' rounding (the kernel's tanh is ~3 ulp, torch's ~1) to ~2e-6 in logits of ~3.
    for key in expected:
        scale = float(expected[key].detach().abs().max())
        atol = 1e-6 * scale + 1e-6
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=atol, msg=key)
    for index, (g, e) in enumerate(zip(got_grads, expected_grads, strict=True)):
        scale = float(e.abs().max())
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5 * scale + 1e-6, msg=f"leaf {index}")


def check_action(rows: int, actions: int, dtype: torch.dtype, bounds: tuple, used: str) -> None:
    """The fused actor sample against TorchRL's ``TanhNormal`` rsample from the same seed:
    values, the random stream it leaves, and the gradients of the outputs named in ``used``
    (``s`` scale, ``a`` action, ``m`` the world model's scaled action). ``params`` is a column
    slice of a wider tensor (strided rows); ``bounds`` not ``(-1, 1)`` run TanhNormal's affine map.
    """
    from torchrl.modules import TanhNormal

    from dreamer.actor_critic.fused_action import (
        STD_SHIFT,
        action_noise,
        sample_bounded_action,
    )

    torch.manual_seed(0)
    wide = _leaf(torch.randn(rows, 2 * actions + 3) * 2, dtype)
    low = torch.full((actions,), float(bounds[0]))
    high = torch.full((actions,), float(bounds[1]))
    weights = {k: torch.randn(rows, actions) for k in "sam"}

    def objective(outputs):  # through a cast to dtype: both get gradients rounded alike
        return sum((weights[k] * outputs[k].to(dtype).float()).sum() for k in used)

    params = wide[:, 1 : 1 + 2 * actions]
    torch.manual_seed(5)
    noise = action_noise(params[:, :actions])
    after_fused = torch.randn(3)
    scale, action, scaled = sample_bounded_action(params, noise, low, high, 0.1, 1.0)
    got = {"s": scale, "a": action, "m": scaled}
    (got_grad,) = torch.autograd.grad(objective(got), wide)

    reference_params = params.detach().float().requires_grad_()
    loc, raw = reference_params.chunk(2, -1)
    reference_scale = 0.9 * torch.sigmoid(raw + STD_SHIFT) + 0.1
    reference_action = _reference_tanh_normal(loc, reference_scale, noise.float(), low, high, dtype)
    expected = {
        "s": reference_scale,
        "a": reference_action,
        "m": reference_action / reference_action.detach().abs().clamp_min(1),
    }
    expected_grad = torch.autograd.grad(objective(expected), reference_params)[0]
    # TorchRL's own sample, in the params' dtype, from the same seed: the same draws.
    torch.manual_seed(5)
    torchrl_action = TanhNormal(
        params[:, :actions].detach(), reference_scale.detach().to(dtype), low=low, high=high
    ).rsample()
    after_reference = torch.randn(3)
    assert torch.equal(after_fused, after_reference), "the random stream moved differently"
    if dtype == torch.float32:
        torch.testing.assert_close(reference_action, torchrl_action, rtol=1e-6, atol=1e-7)
    tolerance = TOLERANCE[dtype]
    for key in "sam":
        assert got[key].dtype == dtype
        torch.testing.assert_close(got[key].float(), expected[key], **tolerance, msg=key)
    full = torch.zeros(rows, 2 * actions + 3)
    full[:, 1 : 1 + 2 * actions] = expected_grad
    scale_of_grad = float(full.abs().max())
    torch.testing.assert_close(
        got_grad.float(), full, rtol=tolerance["rtol"], atol=tolerance["atol"] * scale_of_grad
    )


def _reference_tanh_normal(loc, scale, noise, low, high, dtype):
    """TanhNormal's rsample with given noise in float32, through TorchRL's safe tanh (whose
    gradient is ``1 - y^2`` also where it clamps) with the clamp of ``dtype``, where the kernel
    clamps for its output dtype."""
    from torchrl.modules.distributions.utils import safetanh

    y = safetanh(loc + noise * scale, torch.finfo(dtype).resolution)
    return (high + low) / 2 + (high - low) / 2 * y


def check_dream_uses_the_action_kernel() -> None:
    """The lean dream with the fused kernels (forced on for CPU tensors) matches TorchRL's
    rollout through the actor's TanhNormal (``test_imagine``'s comparison and tolerances), and
    its actor sample ran the action kernel at every step."""
    from conftest import load_config
    from test_imagine import HORIZON, dream
    from toy_env import ToyBatchedEnv

    from dreamer.actor_critic import fused_action
    from dreamer.agent import build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model import fused_ops
    from dreamer.world_model.networks import model_size_from_config

    cfg = load_config("profile=smoke")
    cfg.compile.enabled = False
    size = model_size_from_config(cfg.model)
    agent = build_agent(cfg, add_acting_state(add_episode_stats(ToyBatchedEnv(6)), size, 2))
    reference, reference_grads = dream(agent, False)
    calls = {"n": 0}
    original_use, original_sample = fused_ops.use_fused, fused_action.sample_bounded_action

    def counted(*args):
        calls["n"] += 1
        return original_sample(*args)

    from dreamer.actor_critic import actor

    fused_ops.use_fused = lambda *tensors: True
    actor.sample_bounded_action = counted
    try:
        lean, lean_grads = dream(agent, True)
    finally:
        fused_ops.use_fused, actor.sample_bounded_action = original_use, original_sample
    assert calls["n"] == HORIZON, calls
    assert set(lean.keys(True, True)) == set(reference.keys(True, True))
    for key in reference.keys(True, True):
        torch.testing.assert_close(lean.get(key), reference.get(key), rtol=1e-5, atol=1e-5)
    assert set(lean_grads) == set(reference_grads)
    for key, expected in reference_grads.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(
            lean_grads[key], expected, rtol=1e-4, atol=1e-5 * scale + 1e-6, msg=key
        )


F32, BF16 = torch.float32, torch.bfloat16
CASES = {
    "gru_12m_fp32": (check_gru, (16, 8, 256, F32, "dense")),
    "gru_12m_bf16": (check_gru, (16, 8, 256, BF16, "dense")),
    "gru_12m_bf16_gates_fp32_belief": (check_gru, (16, 8, 256, BF16, "dense", F32)),
    "gru_odd_strided_fp32": (check_gru, (7, 3, 37, F32, "strided")),
    "gru_odd_strided_bf16": (check_gru, (7, 3, 37, BF16, "strided")),
    "gru_odd_expanded_fp32": (check_gru, (5, 3, 19, F32, "expanded")),
    "gru_12m_bias_fp32": (check_gru, (16, 8, 256, F32, "dense", None, True)),
    "gru_odd_strided_bias_bf16": (check_gru, (7, 3, 37, BF16, "strided", None, True)),
    "gru_carried_bias_fp32": (check_gru, (16, 8, 256, F32, "dense", None, True, True)),
    "gru_carried_expanded_fp32": (check_gru, (5, 3, 19, F32, "expanded", None, False, True)),
    "gru_carried_bf16": (check_gru, (7, 3, 37, BF16, "dense", None, True, True)),
    "gru_split_12m_fp32": (check_gru_split, (16, 8, 256, F32, F32, "")),
    "gru_split_12m_bf16_copies": (check_gru_split, (16, 8, 256, BF16, BF16, "")),
    "gru_split_odd_copy_and_own_unread": (check_gru_split, (7, 3, 37, BF16, BF16, "copy own")),
    "gru_split_odd_nothing_carried": (check_gru_split, (7, 3, 37, F32, F32, "carried")),
    "gru_split_odd_out_unread": (check_gru_split, (5, 3, 19, F32, F32, "out")),
    "sample_split_12m_fp32": (check_sample_split, ((16, 32, 16), F32, F32, "")),
    "sample_split_12m_bf16_carry": (check_sample_split, ((16, 32, 16), F32, BF16, "")),
    "sample_split_odd_bf16_logits": (check_sample_split, ((5, 7, 11), BF16, BF16, "")),
    "sample_split_odd_logits_unread": (check_sample_split, ((5, 7, 11), F32, BF16, "logits")),
    "sample_split_odd_carried_unread": (check_sample_split, ((5, 7, 11), F32, F32, "carried")),
    "filter_backward_adds_nothing_per_step": (check_filter_backward_adds_nothing_per_step, ()),
    "sample_12m_fp32_unimix0": (check_sample, ((16, 32, 16), F32, 0.0)),
    "sample_12m_fp32_unimix001": (check_sample, ((16, 32, 16), F32, 0.01)),
    "sample_12m_bf16_unimix001": (check_sample, ((16, 32, 16), BF16, 0.01)),
    "sample_odd_fp32_unimix0": (check_sample, ((5, 3, 7, 11), F32, 0.0)),
    "sample_odd_fp32_unimix001": (check_sample, ((5, 3, 7, 11), F32, 0.01)),
    "sample_odd_bf16_unimix0": (check_sample, ((5, 3, 7, 11), BF16, 0.0)),
    "sample_carried_12m_fp32": (check_sample, ((16, 32, 16), F32, 0.01, True)),
    "sample_carried_odd_bf16": (check_sample, ((5, 7, 11), BF16, 0.0, True)),
    "sample_autocast_float32": (check_sample_under_autocast, ()),
    "filter_uses_the_kernels": (check_filter_uses_the_kernels, ()),
    "action_fp32_all_outputs": (check_action, (16, 8, F32, (-1, 1), "sam")),
    "action_fp32_action_only": (check_action, (7, 3, F32, (-1, 1), "a")),
    "action_fp32_scaled_only_wide_bounds": (check_action, (33, 5, F32, (-2.5, 1.5), "m")),
    "action_bf16_scale_and_action": (check_action, (16, 8, BF16, (-1, 1), "sa")),
    "dream_uses_the_action_kernel": (check_dream_uses_the_action_kernel, ()),
}


def run_cases() -> dict[str, str]:
    """Every case's outcome: ``"ok"`` or its traceback."""
    assert "triton" not in sys.modules
    return check_cases(CASES)


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_torch_in_the_interpreter(case: str, interpreted: dict[str, str]):
    assert interpreted[case] == "ok", interpreted[case]


def test_the_fused_path_is_for_cuda_tensors_and_can_be_switched_off():
    from dreamer.world_model import fused_ops

    assert fused_ops.triton is not None, "triton is a test dependency (pyproject's dev extra)"
    assert not fused_ops.use_fused(torch.zeros(1)), "CPU tensors run the torch code"
    assert fused_ops.fused_kernels_enabled()
    try:
        fused_ops.set_fused_kernels(False)
        assert not fused_ops.fused_kernels_enabled()
    finally:
        fused_ops.set_fused_kernels(True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(run_cases()))
