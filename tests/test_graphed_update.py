"""The fast learner computes what the plain eager update computes (on CPU, where it runs eagerly).

Tolerances: float32 throughout; the two paths run the same loss modules on the same batch with the
same RNG stream, so losses agree to 1e-6, gradients to 1e-5 (relative) and updated parameters to
1e-5 relative / 1e-6 absolute; the optimizer differs only in doing its step-count arithmetic in
float32 tensors instead of Python doubles.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.trainers.algorithms import DreamerV3Optimizer

from dreamer.training.capturable_optimizer import (
    advance_host_steps,
    device_step_counters,
    init_optimizer_state,
    optimizer_step,
)


def _sequences(batch: int, steps: int, obs_dim: int, action_dim: int) -> TensorDict:
    generator = torch.Generator().manual_seed(7)
    is_init = torch.rand(batch, steps, 1, generator=generator) < 0.1
    terminated = torch.roll(is_init, -1, dims=1) & (torch.rand(batch, steps, 1) < 0.5)
    return TensorDict(
        {
            "policy": torch.randn(batch, steps, obs_dim, generator=generator),
            "action": torch.rand(batch, steps, action_dim, generator=generator) * 2 - 1,
            "is_init": is_init,
            "next": {
                "policy": torch.randn(batch, steps, obs_dim, generator=generator),
                "reward": torch.randn(batch, steps, 1, generator=generator),
                "done": terminated.clone(),
                "terminated": terminated,
                "truncated": torch.zeros(batch, steps, 1, dtype=torch.bool),
            },
        },
        [batch, steps],
    )


def assert_updates_agree(expected_update, expected_agent, update, agent, updates: int = 3):
    """``update`` on ``agent`` gives the losses and gradients of ``expected_update`` on
    ``expected_agent`` (two learners of one agent's copies, e.g. captured two ways) over a few
    fresh batches, each update from the same weights."""
    for index in range(updates):
        # In place (the graphs keep their tensors): both updates start from the same weights,
        # so the losses and gradients of each update must agree whatever the optimizers did.
        agent.loss.load_state_dict(expected_agent.loss.state_dict())
        batch = _sequences(16, 64, obs_dim=4, action_dim=2).to("cuda")
        torch.manual_seed(index)
        expected = expected_update(batch)
        torch.manual_seed(index)
        got = update(batch)
        for key in [k for k in expected.keys() if k.startswith("loss_")]:
            assert bool(torch.isfinite(got[key])), key
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5, msg=key)
        reference = dict(expected_agent.loss.named_parameters())
        for name, param in agent.loss.named_parameters():
            if reference[name].grad is not None:
                torch.testing.assert_close(
                    param.grad, reference[name].grad, rtol=1e-4, atol=1e-5, msg=name
                )


def _agent(cfg, seed: int):
    from toy_env import ToyBatchedEnv

    from dreamer.agent import build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model.networks import model_size_from_config

    env = add_acting_state(
        add_episode_stats(ToyBatchedEnv(4)), model_size_from_config(cfg.model), 2
    )
    torch.manual_seed(seed)
    return build_agent(cfg, env)


@pytest.mark.parametrize("warmup_steps", [0, 3])
def test_device_counter_step_matches_torchrl_optimizer(warmup_steps):
    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    reference = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in reference]

    def make(params):
        return DreamerV3Optimizer(
            [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-2}],
            warmup_steps=warmup_steps,
            agc=0.3,
        )

    torch_rl, capturable = make(reference), make(ours)
    init_optimizer_state(capturable)
    steps = device_step_counters(capturable)
    for _ in range(5):
        grads = [torch.randn(s) * 10 for s in shapes]
        for p, q, g in zip(reference, ours, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        torch_rl.step()
        optimizer_step(capturable, steps)
        advance_host_steps(capturable)
    for p, q in zip(reference, ours, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert [g["step"] for g in capturable.param_groups] == [5, 5]
    assert [float(s) for s in steps] == [5.0, 5.0]
    # The checkpoint format is TorchRL's: the reference optimizer can load ours.
    torch_rl.load_state_dict(capturable.state_dict())


def test_fast_path_matches_eager_update_on_the_same_batch(smoke_cfg):
    from dreamer.training.graphed_update import GraphedUpdate
    from dreamer.training.update import update_step

    eager_agent, fast_agent = _agent(smoke_cfg, 11), _agent(smoke_cfg, 11)
    sequences = _sequences(3, 8, obs_dim=4, action_dim=2)
    fast = GraphedUpdate(fast_agent, sequences, cuda_graph=False)
    for update in range(2):
        if update:
            # Start the second update from identical states again: rounding differences would
            # otherwise flip sampled latents and make the comparison chaotic, not informative.
            fast_agent.loss.load_state_dict(eager_agent.loss.state_dict())
            # A deep copy: Optimizer.load_state_dict keeps same-device tensors by reference.
            fast_agent.optimizer.load_state_dict(copy.deepcopy(eager_agent.optimizer.state_dict()))
        torch.manual_seed(100 + update)
        expected = update_step(eager_agent, sequences.clone())
        torch.manual_seed(100 + update)
        got = fast(sequences.clone())
        for key in [k for k in expected.keys() if k.startswith("loss_")]:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)
        named_eager = dict(eager_agent.loss.named_parameters())
        for name, param in fast_agent.loss.named_parameters():
            reference = named_eager[name]
            if reference.grad is not None:
                torch.testing.assert_close(
                    param.grad,
                    reference.grad,
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda m, u=update, n=name: f"{u} {n}: {m}",
                )
            torch.testing.assert_close(
                param,
                reference,
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, u=update, n=name: f"{u} {n}: {m}",
            )
    assert fast_agent.optimizer.state_dict()["param_groups"][0]["step"] == 2


def test_fast_path_trains_the_critic_target_and_all_param_groups(smoke_cfg):
    from dreamer.training.graphed_update import GraphedUpdate

    agent = _agent(smoke_cfg, 3)
    sequences = _sequences(2, 6, obs_dim=4, action_dim=2)
    groups_before = [
        [p.detach().clone() for p in group["params"]] for group in agent.optimizer.param_groups
    ]
    target_before = agent.loss.value_loss.target_value_model_params.clone()
    update = GraphedUpdate(agent, sequences, cuda_graph=False)
    metrics = update(sequences)
    assert torch.isfinite(metrics["loss_total"])
    for before, group in zip(groups_before, agent.optimizer.param_groups, strict=True):
        assert any(not torch.equal(b, p) for b, p in zip(before, group["params"], strict=True))
    target_after = agent.loss.value_loss.target_value_model_params
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            target_before.values(True, True), target_after.values(True, True), strict=True
        )
    )


def test_cuda_graph_needs_a_cuda_sample(smoke_cfg):
    from dreamer.training.graphed_update import GraphedUpdate

    agent = _agent(smoke_cfg, 0)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedUpdate(agent, _sequences(2, 4, 4, 2), cuda_graph=True)
