"""Values written in place: kernels that write into several outputs (one per reader) or into
their columns of a buffer, the dream's loop built on them, and the filter's GRU features.

The kernel checks run through Triton's interpreter in one subprocess (this file, run as a script;
see ``test_fused_ops.py`` for why and for the tolerances). :class:`Trajectory` is checked in
pytest's own process with a torch stand-in for the kernels.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import check_cases
from test_fused_ops import TOLERANCE, UPDATE_BIAS, _leaf, _reference_gru

from dreamer.imagination.trajectory import Trajectory
from dreamer.world_model.filled_buffers import alias

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from op_count import OpCounter  # noqa: E402

F32, BF16 = torch.float32, torch.bfloat16


def _weighted(outputs: list[torch.Tensor], read: list[bool]) -> torch.Tensor:
    """A fixed random weighting of the outputs marked in ``read`` (the others are not read)."""
    generator = torch.Generator().manual_seed(9)
    total = 0
    for output, wanted in zip(outputs, read, strict=True):
        weight = torch.randn(output.shape, generator=generator).to(output.device)
        total = total + (weight * output.float()).sum() * wanted
    return total


def _outputs(rows: int, width: int, dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """One output per dtype; the first and the last are slices of ``[rows, 3, width]`` buffers,
    as a trajectory's slots are."""
    outputs = [torch.empty(rows, width, dtype=d) for d in dtypes]
    outputs[0] = torch.empty(rows, 3, width, dtype=dtypes[0])[:, 1]
    outputs[-1] = torch.empty(rows, 3, width, dtype=dtypes[-1])[:, 2]
    return outputs


def check_gru_into(
    rows: int, blocks: int, group: int, dtype: torch.dtype, dtypes: list, unread: set
) -> None:
    """:func:`gru_gate_update_into` writes the next belief into each output, in its dtype, and
    its gradients are those of the torch maths with each output read by its own weighting
    (outputs whose index is in ``unread`` not at all: their gradient stays None)."""
    from dreamer.world_model.fused_ops import gru_gate_update_into

    torch.manual_seed(2)
    width = blocks * group
    gates = _leaf(torch.randn(blocks, rows, 3 * group) * 2, dtype)
    belief = _leaf(torch.randn(rows, width), F32)
    bias = _leaf(torch.randn(blocks * 3 * group), F32)
    read = [i not in unread for i in range(len(dtypes))]
    got = gru_gate_update_into(gates, belief, UPDATE_BIAS, bias, _outputs(rows, width, dtypes))
    assert [g.dtype for g in got] == dtypes
    out = _reference_gru(gates.float() + bias.view(blocks, 1, -1), belief)
    expected = [out.to(d) for d in dtypes]
    tolerance = TOLERANCE[BF16 if BF16 in (dtype, *dtypes) else F32]
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g.float(), e.float(), **tolerance, msg=f"output {index}")
    leaves = [gates, belief, bias]
    got_grads = torch.autograd.grad(_weighted(got, read), leaves)
    expected_grads = torch.autograd.grad(_weighted(expected, read), leaves)
    for name, g, e in zip(
        ("d gates", "d belief", "d bias"), got_grads, expected_grads, strict=True
    ):
        if name == "d bias" and dtype == BF16:  # the row sum of the bf16 gate gradients
            e = got_grads[0].float().sum(1).flatten()
        torch.testing.assert_close(g.float(), e.float(), **tolerance, msg=name)


def check_sample_into(shape: tuple[int, int, int], dtype, dtypes: list, unread: set) -> None:
    """:func:`fused_sample_into` writes the flattened sample into each output, in its dtype, and
    its logits' gradient is the torch code's with each output read by its own weighting."""
    from dreamer.world_model.fused_sample import fused_sample_into
    from dreamer.world_model.sampling import straight_through_sample

    torch.manual_seed(3)
    rows, width = shape[0], shape[1] * shape[2]
    logits = _leaf(torch.randn(shape) * 3, dtype)
    noise = torch.empty(rows, 3, *shape[1:]).exponential_()[:, 1]
    read = [i not in unread for i in range(len(dtypes))]
    got = fused_sample_into(logits, 0.01, noise, _outputs(rows, width, dtypes))
    assert [g.dtype for g in got] == dtypes
    logits32 = _leaf(logits, F32)
    sample = straight_through_sample(logits32, 0.01, noise).flatten(-2)
    expected = [sample.to(d) for d in dtypes]
    for index, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(g.float(), e.float().detach()), f"output {index}"
    (got_grad,) = torch.autograd.grad(_weighted(got, read), [logits])
    (expected_grad,) = torch.autograd.grad(_weighted(expected, read), [logits32])
    tolerance = TOLERANCE[BF16 if BF16 in (dtype, *dtypes) else F32]
    torch.testing.assert_close(got_grad.float(), expected_grad, **tolerance)


def _toy_agent():
    from conftest import load_config
    from toy_env import ToyBatchedEnv

    from dreamer.agent import build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model.networks import model_size_from_config

    cfg = load_config("profile=smoke")
    cfg.compile.enabled = False
    size = model_size_from_config(cfg.model)
    return build_agent(cfg, add_acting_state(add_episode_stats(ToyBatchedEnv(6)), size, 2))


def _actor_loss_dream(agent, steps: int, stepwise: bool = False, autocast: bool = True):
    """TorchRL's actor-loss dream (world model held out, random actions), under bf16 autocast
    unless ``autocast`` is False, from 7 fixed start states, and a weighting of what the actor loss reads; ``stepwise`` runs
    the plain loop with the same fused actor sample, on the same draws."""
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl.objectives.utils import hold_out_net

    import dreamer.imagination.imagine as imagine_module
    from dreamer.world_model.rssm_parts import rssm_parts

    def stepwise_dream(parts, sampler, state, belief, steps, deferred):
        return imagine_module._stepwise_dream(parts, None, sampler, state, belief, steps, deferred)

    env = agent.model_env
    size = agent.size
    device = next(agent.actor.parameters()).device
    torch.manual_seed(3)
    state = torch.zeros(7, size.stoch, device=device)
    state.view(7, size.num_categoricals, -1)[..., 0] = 1
    belief = torch.randn(7, size.deter, device=device)
    start = TensorDict({"state": state, "belief": belief}, [7], device=device)
    agent.loss.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with (
        torch.autocast(device.type, dtype=BF16, enabled=autocast),
        set_exploration_type(ExplorationType.RANDOM),
        hold_out_net(env),
    ):
        prior, reward = env.__dict__["lean_modules"]
        fused_dream = imagine_module.fused_dream
        imagine_module.fused_dream = stepwise_dream if stepwise else fused_dream
        try:
            out = imagine_module.imagine(rssm_parts(prior).prior, reward, agent.actor, start, steps)
        finally:
            imagine_module.fused_dream = fused_dream
        # What the actor loss reads: the states, the beliefs and the rewards.
        keys = ["state", "belief", ("next", "state"), ("next", "belief"), ("next", "reward")]
        objective = _weighted([out.get(k) for k in keys], [True] * len(keys))
    return out, objective


def _agent_of(model: str, device: str = "cpu"):
    """The toy agent (``"toy"``), or ``model``'s agent on the embedded Ant (its sizes are the
    kernels' constants: block counts, group widths, the columns each program covers)."""
    if model == "toy":
        return _toy_agent()
    from conftest import load_config

    from dreamer.agent import build_agent
    from dreamer.training.loop import make_training_env

    cfg = load_config(f"model={model}", f"device={device}", "env.num_envs=4", "env.backend=mujoco")
    cfg.compile.enabled = False
    torch.manual_seed(0)
    return build_agent(cfg, make_training_env(cfg))


def check_dream_matches_the_stepwise_loop(model: str, steps: int) -> None:
    """In float32, the fused dream's values are bitwise the plain loop's (the same kernels and
    matmuls on the same values) and its actor gradients agree to summation order. (Under bf16
    autocast they would not be bitwise here: Triton's interpreter rounds float32 to bf16 toward
    zero, where CUDA's Triton and autocast round to nearest; bench/check_fused_dream.py checks
    that case on a GPU.)"""
    agent = _agent_of(model)
    results = []
    for stepwise in (False, True):
        out, objective = _actor_loss_dream(agent, steps, stepwise, autocast=False)
        objective.backward()
        grads = {k: p.grad.clone() for k, p in agent.actor.named_parameters()}
        results.append((out, grads))
    (fused, fused_grads), (plain, plain_grads) = results
    assert set(fused.keys(True, True)) == set(plain.keys(True, True))
    for key in plain.keys(True, True):
        assert torch.equal(fused.get(key), plain.get(key)), key
    assert fused_grads.keys() == plain_grads.keys() and fused_grads
    for key, expected in plain_grads.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(
            fused_grads[key], expected, rtol=1e-3, atol=1e-3 * scale, msg=key
        )


# The ops that only move values between a loop's steps: adds (of gradients), casts and
# concatenations (names as bench/op_count.py's OpCounter keeps them).
MOVES = ("aten.add", "aten.add_", "aten._to_copy", "aten.cat")


def _moves(counter: OpCounter) -> int:
    return sum(counter.ops[name] for name in MOVES)


def check_dream_moves_nothing_per_step() -> None:
    """Under bf16 autocast, the actor loss's dream runs as many adds, casts and concatenations
    at 3 steps as at 6, forward and backward: every tensor a step hands on has one reader, in
    its dtype, and the GRU's features and the actor's input are written in place (the plain
    loop ran 5 casts and 2 concatenations forward and 5 casts and 7 adds backward per step)."""
    agent = _toy_agent()
    counts = {}
    for steps in (3, 6):
        with OpCounter() as forward:
            _, objective = _actor_loss_dream(agent, steps)
        with OpCounter() as backward:
            objective.backward()
        counts[steps] = (_moves(forward), _moves(backward))
    assert counts[3] == counts[6], counts


def check_filter_forward_moves_nothing_per_step() -> None:
    """Under bf16 autocast, the filter's forward runs as many adds, casts and concatenations at
    3 steps as at 6: its GRU features are written in place (a concatenation per step before;
    the backward's count is ``test_fused_ops``' ``filter_backward_adds_nothing_per_step``)."""
    from test_fast_filter import SIZE

    from dreamer.world_model.networks import make_rssm_cells
    from dreamer.world_model.rssm import observe_sequence
    from dreamer.world_model.sampling import race_noise

    torch.manual_seed(0)
    prior, posterior = make_rssm_cells(3, SIZE)
    counts = {}
    for steps in (3, 6):
        embed = torch.randn(4, steps, SIZE.units, requires_grad=True)
        action = torch.rand(4, steps, 3) * 2 - 1
        is_init = torch.zeros(4, steps, 1, dtype=torch.bool)
        noise = race_noise((2, 4, steps, SIZE.num_categoricals, SIZE.num_classes), action)
        with torch.autocast("cpu", dtype=BF16), OpCounter() as forward:
            observe_sequence(prior, posterior, embed, embed, action, is_init, noise)
        counts[steps] = _moves(forward)
    assert counts[3] == counts[6], counts


def check_norm_into_columns(rows: int, width: int, dtype: torch.dtype) -> None:
    """:func:`rms_norm_silu` with ``out`` (columns of a wider buffer) writes what it returns
    without one, and with the buffer joined by :func:`filled` the gradients are those of the
    concatenation."""
    from dreamer.world_model.filled_buffers import filled
    from dreamer.world_model.fused_norm import rms_norm_silu

    torch.manual_seed(4)
    x = _leaf(torch.randn(rows, width) * 2, dtype)
    weight = _leaf(torch.rand(width) + 0.5, F32)
    other = _leaf(torch.randn(rows, 3), dtype)
    buffer = torch.empty(rows, width + 3, dtype=dtype)
    buffer[:, width:] = other.detach()
    written = rms_norm_silu(x, weight, 1e-4, out=buffer[:, :width])
    joined = filled(buffer, [written, other], lambda grad: grad.split([width, 3], -1))
    expected = torch.cat([rms_norm_silu(x, weight, 1e-4), other], -1)
    assert torch.equal(joined, expected)
    generator = torch.Generator().manual_seed(9)
    w = torch.randn(joined.shape, generator=generator)
    got = torch.autograd.grad((w * joined.float()).sum(), [x, weight, other])
    want = torch.autograd.grad((w * expected.float()).sum(), [x, weight, other])
    for name, g, e in zip(("d x", "d weight", "d other"), got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=name)


CASES = {
    "gru_into_fp32": (check_gru_into, (16, 8, 64, F32, [F32, F32, F32], set())),
    "gru_into_dream_bf16": (
        check_gru_into,
        (16, 8, 64, BF16, [F32, BF16, F32, BF16, BF16, BF16, F32], set()),
    ),
    "gru_into_odd_some_unread": (
        check_gru_into,
        (7, 3, 37, BF16, [F32, BF16, F32, BF16, BF16], {0, 3}),
    ),
    "gru_into_one_output": (check_gru_into, (5, 3, 19, F32, [F32], set())),
    "sample_into_dream_bf16": (
        check_sample_into,
        ((16, 32, 16), F32, [F32, BF16, BF16, F32], set()),
    ),  # fmt: skip
    "sample_into_odd_some_unread": (
        check_sample_into,
        ((5, 7, 11), BF16, [F32, BF16, F32], {1}),
    ),  # fmt: skip
    "sample_into_one_output": (check_sample_into, ((5, 7, 11), F32, [F32], set())),
    "dream_matches_the_stepwise_loop": (check_dream_matches_the_stepwise_loop, ("toy", 5)),
    # At the learner's sizes too (about 40 s here), as no GPU runs in CI.
    "dream_matches_the_stepwise_loop_12m": (
        check_dream_matches_the_stepwise_loop,
        ("small12m", 3),
    ),  # fmt: skip
    "dream_moves_nothing_per_step": (check_dream_moves_nothing_per_step, ()),
    "filter_forward_moves_nothing_per_step": (check_filter_forward_moves_nothing_per_step, ()),
    "norm_into_columns_fp32": (check_norm_into_columns, (16, 64, F32)),
    "norm_into_columns_odd_bf16": (check_norm_into_columns, (7, 37, BF16)),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_bf16_dream_is_bitwise_the_stepwise_loops():
    """Where the kernels round to nearest as autocast does (CUDA), each reader's bf16 copy is the
    cast the plain loop made: the dream is bitwise the same, the gradients agree to summation
    order (small12m, as the learner runs it)."""
    agent = _agent_of("small12m", "cuda")
    results = []
    for stepwise in (False, True):
        out, objective = _actor_loss_dream(agent, 15, stepwise)
        objective.backward()
        results.append((out, {k: p.grad.clone() for k, p in agent.actor.named_parameters()}))
    (fused, fused_grads), (plain, plain_grads) = results
    for key in plain.keys(True, True):
        assert torch.equal(fused.get(key), plain.get(key)), key
    for key, expected in plain_grads.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(
            fused_grads[key], expected, rtol=2e-2, atol=2e-2 * scale, msg=key
        )


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_torch_in_the_interpreter(case: str, interpreted: dict[str, str]):
    assert interpreted[case] == "ok", interpreted[case]


class _WriteInto(torch.autograd.Function):
    """A stand-in for a step kernel: ``2 x`` into ``slot`` (returned), and ``3 x``."""

    @staticmethod
    def forward(ctx, x, slot_holder):
        slot = alias(slot_holder[0])
        slot.copy_(2 * x)
        return slot, 3 * x

    @staticmethod
    def backward(ctx, grad_slot, grad_next):
        return 2 * grad_slot + 3 * grad_next, None


def test_a_trajectory_is_the_stack_of_its_steps_with_the_same_gradients():
    torch.manual_seed(0)
    start = torch.randn(4, 5, requires_grad=True)
    steps = 3
    current, following = Trajectory(start, steps, True), Trajectory(start, steps, False)
    value = start
    for step in range(steps):
        out, value = _WriteInto.apply(value, [following.slot(step)])
        following.record(out)
        if step + 1 < steps:
            copy, _ = _WriteInto.apply(value / 3, [current.slot(step)])
            current.record(copy)
    got = [following.assemble(), current.assemble(start)]
    weights = [torch.randn(4, steps, 5) for _ in got]
    got_grad = torch.autograd.grad(
        sum((w * g).sum() for w, g in zip(weights, got, strict=True)), start
    )[0]

    reference = start.detach().clone().requires_grad_()
    values, value = [], reference
    for _ in range(steps):
        values.append(2 * value)
        value = 3 * value
    expected = [torch.stack(values, 1), torch.stack([reference, *values[:-1]], 1)]
    objective = sum((w * e).sum() for w, e in zip(weights, expected, strict=True))
    expected_grad = torch.autograd.grad(objective, reference)[0]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(got_grad, expected_grad)


def test_a_trajectory_refuses_missing_steps_and_a_misplaced_start():
    start = torch.randn(2, 3)
    trajectory = Trajectory(start, 2, with_start=False)
    trajectory.record(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="1 outputs recorded for 2 slots"):
        trajectory.assemble()
    trajectory.record(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="start value"):
        trajectory.assemble(start)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(check_cases(CASES)))
