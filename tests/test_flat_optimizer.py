"""The flat optimizer step computes TorchRL's DreamerV3 step; flattening keeps every parameter.

The kernels run through Triton's interpreter in a subprocess (this file as a script, as in
``test_lambda_return.py``) and compiled on CUDA. Reference: ``DreamerV3Optimizer.step`` on an
identical copy of the parameters. Tolerance: ``rtol=1e-5, atol=1e-6`` on parameters, RMS and
momentum after three steps (the kernel's norms add squares in another order and it takes the
bias corrections' powers in float32, TorchRL in Python doubles).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import check_cases
from torch import nn
from torchrl.trainers.algorithms import DreamerV3Optimizer

from dreamer.training.capturable_optimizer import device_step_counters, init_optimizer_state
from dreamer.training.flat_optimizer import (
    ALIGNMENT,
    BLOCK,
    FlatOptimizerStep,
    flat_buffer,
    flatten_parameters,
)

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
DEVICE = "cpu"  # the interpreter runs on CPU tensors; test_the_kernels_on_cuda switches it


def three_groups(seed: int) -> tuple[list[nn.Parameter], DreamerV3Optimizer]:
    """Parameters in three groups: one spanning several kernel blocks, odd sizes, a group
    without adaptive clipping and one parameter that never gets a gradient."""
    generator = torch.Generator().manual_seed(seed)

    def parameter(*shape: int) -> nn.Parameter:
        return nn.Parameter(torch.randn(*shape, generator=generator).to(DEVICE))

    groups = [
        [parameter(3, BLOCK + 37), parameter(5)],
        [parameter(7, 9), parameter(8)],  # the 8 has no gradient
        [parameter(BLOCK)],
    ]
    optimizer = DreamerV3Optimizer(
        [
            {"params": groups[0], "lr": 1e-2},
            {"params": groups[1], "lr": 3e-3},
            {"params": groups[2], "lr": 1e-3, "agc": 0.0},
        ],
        agc=0.3,
        warmup_steps=2,
    )
    return [p for group in groups for p in group], optimizer


def gradients(step: int, parameters: list[nn.Parameter]) -> list[torch.Tensor | None]:
    """Large gradients for the first group (adaptive clipping cuts them), small elsewhere."""
    generator = torch.Generator().manual_seed(100 + step)
    scales = [30.0, 30.0, 0.1, None, 5.0]
    return [
        None if scale is None else scale * torch.randn(p.shape, generator=generator).to(DEVICE)
        for p, scale in zip(parameters, scales, strict=True)
    ]


def check_matches_torchrl(steps: int = 3, first_step: int = 0) -> None:
    """``steps`` steps of both optimizers, their step counts starting at ``first_step`` (late in
    a run the bias corrections' powers underflow; TorchRL takes them in Python floats)."""
    ours, optimizer = three_groups(0)
    theirs, reference = three_groups(0)
    for group in [*optimizer.param_groups, *reference.param_groups]:
        group["step"] = first_step
    assert flatten_parameters(optimizer)
    init_optimizer_state(optimizer)
    flat = FlatOptimizerStep.create(optimizer, device_step_counters(optimizer))
    assert flat is not None
    untouched = ours[3].detach().clone()
    for step in range(steps):
        grads = gradients(step, ours)
        for a, b, g in zip(ours, theirs, grads, strict=True):
            a.grad = None if g is None else g.clone()
            b.grad = None if g is None else g.clone()
        expected_norm = torch.nn.utils.get_total_norm([g for g in grads if g is not None])
        norm = flat.step()
        reference.step()
        torch.testing.assert_close(norm, expected_norm, **TOLERANCE)
    clipped = torch.linalg.vector_norm(grads[0]) > 0.3 * torch.linalg.vector_norm(ours[0])
    assert clipped, "the case must exercise adaptive clipping"
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a.detach(), b.detach(), **TOLERANCE, msg=f"param {index}")
        for name in ("rms", "momentum"):
            if b in reference.state:
                torch.testing.assert_close(
                    optimizer.state[a][name], reference.state[b][name], **TOLERANCE
                )
    assert torch.equal(ours[3].detach(), untouched)  # no gradient: not updated
    assert not optimizer.state[ours[3]]["momentum"].any()
    assert torch.equal(flat.steps.cpu(), torch.full((3,), float(first_step + steps)))


def check_state_views_survive_the_steps() -> None:
    """The optimizer's state dict reads the flat buffers the kernel writes (checkpoints)."""
    parameters, optimizer = three_groups(1)
    flatten_parameters(optimizer)
    init_optimizer_state(optimizer)
    flat = FlatOptimizerStep.create(optimizer, device_step_counters(optimizer))
    for p, g in zip(parameters, gradients(0, parameters), strict=True):
        p.grad = g
    flat.step()
    saved = optimizer.state_dict()["state"]
    assert saved[0]["rms"].abs().sum() > 0
    torch.testing.assert_close(saved[0]["rms"].flatten(), flat.rms[: parameters[0].numel()])


def check_graphed_update_takes_the_flat_step() -> None:
    """A whole learner update (the CUDA graph's step function, run eagerly) with the flat step
    against ``update_step`` with TorchRL's optimizer, on the same batch and RNG."""
    from conftest import load_config
    from test_graphed_update import _agent, _sequences

    from dreamer.training.graphed_update import GraphedUpdate
    from dreamer.training.update import update_step

    cfg = load_config("profile=smoke")
    cfg.compile.enabled = False
    eager_agent, fast_agent = _agent(cfg, 11), _agent(cfg, 11)
    sequences = _sequences(3, 8, obs_dim=4, action_dim=2)
    fast = GraphedUpdate(fast_agent, sequences, cuda_graph=False)
    assert fast.flat_step is not None
    torch.manual_seed(100)
    expected = update_step(eager_agent, sequences.clone())
    torch.manual_seed(100)
    got = fast(sequences.clone())
    torch.testing.assert_close(got["grad_norm"], expected["grad_norm"], rtol=1e-5, atol=0)
    reference = dict(eager_agent.loss.named_parameters())
    changed = 0
    for name, parameter in fast_agent.loss.named_parameters():
        torch.testing.assert_close(parameter, reference[name], **TOLERANCE, msg=name)
        changed += parameter.grad is not None
    assert changed > 10


CASES = {
    "flat_step_matches_torchrl": (check_matches_torchrl, ()),
    "one_step_from_zero": (check_matches_torchrl, (1,)),
    # beta1 ** step underflows float32 from step ~830 (0.9), beta2 ** step from ~87,000 (0.999)
    "late_steps": (check_matches_torchrl, (2, 1_000)),
    "very_late_steps": (check_matches_torchrl, (2, 200_000)),
    "state_dict_reads_the_flat_state": (check_state_views_survive_the_steps, ()),
}
# The learner's CPU tests build their agent on the CPU: the kernels run there only interpreted.
INTERPRETED_CASES = {
    **CASES,
    "graphed_update_takes_the_flat_step": (check_graphed_update_takes_the_flat_step, ()),
}


@pytest.mark.parametrize("case", INTERPRETED_CASES)
def test_flat_step_in_the_interpreter(case: str, interpreted: dict[str, str]):
    assert interpreted[case] == "ok", interpreted[case]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_the_kernels_on_cuda(case: str, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DEVICE", "cuda")
    check, args = CASES[case]
    check(*args)


def test_flattening_keeps_values_and_aligns_every_parameter():
    module = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    other = nn.Linear(3, 2)
    x = torch.randn(4, 5)
    before = other(module(x))
    values = [p.detach().clone() for p in [*module.parameters(), *other.parameters()]]
    optimizer = DreamerV3Optimizer(
        [{"params": list(module.parameters())}, {"params": list(other.parameters())}],
        warmup_steps=0,
    )
    assert flatten_parameters(optimizer)
    parameters = [*module.parameters(), *other.parameters()]
    flat = flat_buffer(parameters)
    assert flat is not None and flat.dim() == 1
    assert all(p.storage_offset() % ALIGNMENT == 0 for p in parameters)
    assert all(torch.equal(p, v) for p, v in zip(parameters, values, strict=True))
    assert torch.equal(other(module(x)), before)
    # The modules train the flat buffer: TorchRL's own step writes through the views.
    other(module(x)).sum().backward()
    optimizer.step()
    assert not torch.equal(flat[: parameters[0].numel()], values[0].flatten())
    assert torch.equal(flat[: parameters[0].numel()], parameters[0].detach().flatten())


def test_flat_buffer_notices_a_replaced_parameter():
    """A parameter whose data was replaced after flattening is no longer in the buffer: the
    learner must fall back to the multi-tensor step, not update stale memory."""
    layer = nn.Linear(4, 4)
    optimizer = DreamerV3Optimizer(layer.parameters())
    flatten_parameters(optimizer)
    assert flat_buffer(list(layer.parameters())) is not None
    layer.bias.data = torch.zeros(4)
    assert flat_buffer(list(layer.parameters())) is None


def test_mixed_dtypes_are_left_alone():
    layer = nn.Linear(4, 4)
    layer.bias.data = layer.bias.data.double()
    optimizer = DreamerV3Optimizer(layer.parameters())
    storages = [p.untyped_storage().data_ptr() for p in layer.parameters()]
    assert not flatten_parameters(optimizer)
    assert [p.untyped_storage().data_ptr() for p in layer.parameters()] == storages


def test_a_restored_state_is_bound_to_the_flat_buffers():
    """``optimizer.load_state_dict`` replaces the state tensors (a resumed run); the flat step
    copies them into its buffers and points the state at them, so it continues from them."""
    parameters, optimizer = three_groups(2)
    flatten_parameters(optimizer)
    init_optimizer_state(optimizer)
    saved = optimizer.state_dict()
    for index, state in saved["state"].items():
        state["rms"] = torch.full_like(state["rms"], float(index + 1))
    optimizer.load_state_dict(saved)
    flat = FlatOptimizerStep(optimizer, device_step_counters(optimizer), flat_buffer(parameters))
    for index, parameter in enumerate(parameters):
        rms = optimizer.state[parameter]["rms"]
        assert rms.untyped_storage().data_ptr() == flat.rms.untyped_storage().data_ptr()
        assert torch.equal(rms, torch.full_like(rms, float(index + 1)))


def test_the_agent_is_built_flat(toy_agent):
    """Flattened at build, before the acting policy can record an address."""
    _, agent = toy_agent
    parameters = [p for group in agent.optimizer.param_groups for p in group["params"]]
    assert flat_buffer(parameters) is not None


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(check_cases(INTERPRETED_CASES)))
