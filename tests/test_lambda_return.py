"""The lambda-return kernels and the loss classes that use them compute what TorchRL computes.

The kernels run on the CPU through Triton's interpreter, which must be on before Triton is
imported, so the kernel checks run in one subprocess (this file as a script, as
``test_fused_ops.py`` does) and each pytest test reads its case's outcome. References are
TorchRL's own code: ``DreamerV3ActorLoss.lambda_target`` (its loop over the dream) and
``DreamerV3ValueLoss.replay_value_loss``. Tolerances: float32 ``rtol=1e-5, atol=1e-6`` (the
kernel may fuse a multiply-add that TorchRL rounds twice); bfloat16 inputs are compared with the
reference run on the same values in float32, which is what the kernel computes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import check_cases
from tensordict import TensorDict
from torchrl.objectives import DreamerV3ActorLoss, DreamerV3ValueLoss

F32 = {"rtol": 1e-5, "atol": 1e-6}
# Where the cases put their tensors: the CPU (the interpreter runs the kernels there), or CUDA in
# test_the_kernels_on_cuda.
DEVICE = "cpu"
HORIZON, LMBDA = 333.0, 0.95


def estimator_holder(gamma: torch.Tensor, lmbda: torch.Tensor) -> SimpleNamespace:
    """A stand-in actor loss that holds only the value estimator's discount and lambda."""
    return SimpleNamespace(value_estimator=SimpleNamespace(gamma=gamma, lmbda=lmbda))


def torchrl_dream_returns(reward, value, continuation, gamma, lmbda):
    """TorchRL's loop, run as the method of a stand-in loss (:func:`estimator_holder`)."""
    holder = estimator_holder(gamma, lmbda)
    return DreamerV3ActorLoss.lambda_target(holder, reward, value, continuation)


def dream_inputs(rows: int, steps: int, dtype: torch.dtype, strided: bool):
    """Reward, value and continuation ``[rows, steps, 1]`` (every other column of a wider tensor
    when ``strided``, as slices of the rollout are), as leaves."""
    generator = torch.Generator().manual_seed(rows * steps)
    width = 2 if strided else 1
    base = torch.randn(3, rows, steps, width, generator=generator)
    base[2] = torch.rand(rows, steps, width, generator=generator)  # continuations in [0, 1)
    leaves = [b.to(DEVICE, dtype).requires_grad_() for b in base]
    return leaves, [leaf[..., :1] for leaf in leaves]


def check_dream(rows: int, steps: int, dtype: torch.dtype, strided: bool) -> None:
    from dreamer.actor_critic.lambda_return import dream_lambda_returns

    gamma, lmbda = torch.tensor(0.997, device=DEVICE), torch.tensor(LMBDA, device=DEVICE)
    leaves, inputs = dream_inputs(rows, steps, dtype, strided)
    reference_leaves = [leaf.detach().float().requires_grad_() for leaf in leaves]
    reference_inputs = [leaf[..., :1] for leaf in reference_leaves]
    got = dream_lambda_returns(*inputs, gamma, lmbda)
    expected = torchrl_dream_returns(*reference_inputs, gamma, lmbda)
    assert got.shape == expected.shape == (rows, steps, 1) and got.dtype == dtype
    tolerance = F32 if dtype == torch.float32 else {"rtol": 1.6e-2, "atol": 1e-5}
    torch.testing.assert_close(got.float(), expected, **tolerance)
    # Rounded as the cast back to the output's dtype rounds it, so both get the same gradient.
    weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5))
    weight = weight.to(DEVICE, dtype).float()
    grads = torch.autograd.grad((weight * got.float()).sum(), leaves)
    expected_grads = torch.autograd.grad((weight * expected).sum(), reference_leaves)
    for name, g, e in zip(("reward", "value", "continuation"), grads, expected_grads, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.float(), e, **tolerance, msg=name)
    # The discount reaches every step: the first return depends on the last reward.
    assert expected_grads[0][:, -1].abs().sum() > 0


def replay_inputs(batch: int, steps: int, bootstrap_shape_has_one: bool = False):
    """A replay-shaped sequence: rewards, episode ends (some terminal, some truncated: done but
    not terminated), bootstraps."""
    generator = torch.Generator().manual_seed(batch + steps)
    reward = torch.randn(batch, steps, 1, generator=generator)
    done = torch.rand(batch, steps, 1, generator=generator) < 0.15
    terminated = done & (torch.rand(batch, steps, 1, generator=generator) < 0.5)
    bootstrap = torch.randn(batch, steps, generator=generator)
    if bootstrap_shape_has_one:
        bootstrap = bootstrap.unsqueeze(-1)
    return tuple(x.to(DEVICE) for x in (reward, done, terminated, bootstrap))


def torchrl_replay_returns(reward, done, terminated, bootstrap):
    """TorchRL's replay target through its public loop: returns of steps 0..T-2 from 1..T-1."""
    from torchrl.objectives.value.functional import td_lambda_return_estimate

    bootstrap = bootstrap.reshape(reward.shape)
    return td_lambda_return_estimate(
        gamma=1 - 1 / HORIZON,
        lmbda=LMBDA,
        next_state_value=bootstrap[:, 1:],
        reward=reward[:, 1:],
        done=done[:, 1:],
        terminated=terminated[:, 1:],
    ).squeeze(-1)


def check_replay(batch: int, steps: int, bootstrap_shape_has_one: bool) -> None:
    from dreamer.actor_critic.lambda_return import replay_lambda_returns

    inputs = replay_inputs(batch, steps, bootstrap_shape_has_one)
    got = replay_lambda_returns(*inputs, 1 - 1 / HORIZON, LMBDA)
    expected = torchrl_replay_returns(*inputs)
    assert got.shape == expected.shape == (batch, steps - 1)
    torch.testing.assert_close(got, expected, **F32)


def value_losses(seed: int):
    """A small two-hot critic (the project's) in our value loss class and in TorchRL's, same
    weights, a slow critic that differs from the online one, and a replayed sequence of
    posterior features with episode ends in it."""
    from dreamer.actor_critic.critic import make_critic
    from dreamer.actor_critic.losses import DreamerValueLoss
    from dreamer.world_model.split_input import SplitInputMLP

    torch.manual_seed(seed)
    bins = 15
    mlp = SplitInputMLP(10, bins, depth=1, num_cells=16, outscale=1.0)
    critic = make_critic(mlp, SimpleNamespace(num_bins=bins)).to(DEVICE)
    kwargs = {"value_loss": "two_hot", "num_value_bins": bins, "slow_critic_regularization": 1.0}
    ours = DreamerValueLoss(critic, **kwargs).to(DEVICE)
    theirs = DreamerV3ValueLoss(critic, **kwargs).to(DEVICE)
    with torch.no_grad():
        for p in ours.target_value_model_params.values(True, True):
            p.add_(0.1 * torch.randn_like(p))
    theirs.load_state_dict(ours.state_dict())
    reward, done, terminated, bootstrap = replay_inputs(3, 12)
    features = TensorDict(
        {
            "state": torch.randn(3, 12, 4),
            "belief": torch.randn(3, 12, 6),
            "bootstrap": bootstrap,
            "next": {"reward": reward, "done": done, "terminated": terminated},
        },
        [3, 12],
    )
    return ours, theirs, features.to(DEVICE)


def replay_losses_and_grads(seed: int):
    ours, theirs, features = value_losses(seed)
    results = []
    for loss in (ours, theirs):
        value = loss.replay_value_loss(features.clone(), horizon=HORIZON, lmbda=LMBDA)
        value = value["loss_replay_value"]
        params = [p for p in loss.value_model_params.values(True, True) if p.requires_grad]
        results.append((value, torch.autograd.grad(value, params)))
    return results


def check_replay_value_loss() -> None:
    (ours, our_grads), (theirs, their_grads) = replay_losses_and_grads(4)
    torch.testing.assert_close(ours, theirs, **F32)
    for g, e in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(g, e, **F32)


def check_actor_loss_uses_the_kernel() -> None:
    """Where the kernels run, ``DreamerActorLoss.lambda_target`` is the kernel's autograd node."""
    from dreamer.actor_critic.losses import DreamerActorLoss

    gamma, lmbda = torch.tensor(0.99, device=DEVICE), torch.tensor(LMBDA, device=DEVICE)
    holder = estimator_holder(gamma, lmbda)
    _, inputs = dream_inputs(4, 5, torch.float32, False)
    got = DreamerActorLoss.lambda_target(holder, *inputs)
    assert "DreamReturns" in type(got.grad_fn).__name__, type(got.grad_fn).__name__
    torch.testing.assert_close(got, torchrl_dream_returns(*inputs, gamma, lmbda), **F32)


CASES = {
    "dream_12m_fp32": (check_dream, (1024, 15, torch.float32, False)),
    "dream_odd_strided_fp32": (check_dream, (131, 7, torch.float32, True)),
    "dream_one_step_fp32": (check_dream, (5, 1, torch.float32, False)),
    "dream_odd_bf16": (check_dream, (37, 15, torch.bfloat16, True)),
    "replay_16x64": (check_replay, (16, 64, False)),
    "replay_odd_bootstrap_with_unit_dim": (check_replay, (131, 9, True)),
    "replay_two_steps": (check_replay, (3, 2, False)),
    "replay_value_loss_matches_torchrl": (check_replay_value_loss, ()),
    "actor_loss_uses_the_kernel": (check_actor_loss_uses_the_kernel, ()),
}


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_torchrl_in_the_interpreter(case: str, interpreted: dict[str, str]):
    assert interpreted[case] == "ok", interpreted[case]


def test_off_the_kernels_the_losses_are_torchrl_bitwise():
    """On CPU tensors (no interpreter) both classes run TorchRL's own code: equal bitwise."""
    (ours, our_grads), (theirs, their_grads) = replay_losses_and_grads(7)
    assert torch.equal(ours, theirs) and ours > 0
    assert all(torch.equal(g, e) for g, e in zip(our_grads, their_grads, strict=True))
    from dreamer.actor_critic.losses import DreamerActorLoss

    gamma, lmbda = torch.tensor(0.99), torch.tensor(LMBDA)
    holder = estimator_holder(gamma, lmbda)
    _, inputs = dream_inputs(4, 5, torch.float32, False)
    got = DreamerActorLoss.lambda_target(holder, *inputs)
    assert torch.equal(got, torchrl_dream_returns(*inputs, gamma, lmbda))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_the_kernels_on_cuda(case: str, monkeypatch):
    """The same cases compiled for the GPU (float32 matmuls without TF32 in the critic)."""
    monkeypatch.setattr(sys.modules[__name__], "DEVICE", "cuda")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    check, args = CASES[case]
    check(*args)


def test_replay_targets_restart_at_episode_ends():
    """A return never reaches past the end of its episode: changing a reward after a done step
    leaves the returns before it unchanged (the joins a strict_length=False sample creates)."""
    from dreamer.actor_critic.lambda_return import replay_lambda_returns

    reward, done, terminated, bootstrap = replay_inputs(2, 10)
    done[:], terminated[:] = False, False
    done[:, 5] = True  # the step at index 5 ends an episode: returns 0..3 stop at it
    before = replay_lambda_returns(reward, done, terminated, bootstrap, 0.99, LMBDA)
    reward[:, 7] += 100.0
    after = replay_lambda_returns(reward, done, terminated, bootstrap, 0.99, LMBDA)
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.equal(before[:, 4:], after[:, 4:])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(check_cases(CASES)))
