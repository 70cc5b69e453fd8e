"""The lean imagination loop returns what TorchRL's rollout of the imagination env returns."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import set_interaction_type
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.utils import hold_out_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from op_count import count_ops  # noqa: E402

HORIZON = 5


def start_states(agent, n: int = 7) -> TensorDict:
    torch.manual_seed(3)
    state = torch.zeros(n, agent.size.stoch)
    state.view(n, agent.size.num_categoricals, -1)[..., 0] = 1
    return TensorDict({"state": state, "belief": torch.randn(n, agent.size.deter)}, [n])


def dream(agent, lean: bool, hold_out_world_model: bool = False):
    """One rollout of the actor loss's kind, and the gradients of a loss on every output.

    ``hold_out_world_model`` freezes the world model during the rollout, as TorchRL's actor loss
    does (then only the actor's layers defer their gradients)."""
    env = agent.model_env
    agent.loss.zero_grad(set_to_none=True)
    rollout = env.rollout if lean else (lambda *a, **k: DreamerEnv.rollout(env, *a, **k))
    torch.manual_seed(0)
    held_out = hold_out_net(env) if hold_out_world_model else nullcontext()
    with set_exploration_type(ExplorationType.RANDOM), held_out:
        start = env.reset(start_states(agent))
        out = rollout(
            HORIZON,
            policy=agent.actor,
            auto_reset=False,
            tensordict=start,
            break_when_any_done=False,
        )
    loss = sum(
        value.float().square().mean()
        for key, value in out.items(True, True)
        if value.is_floating_point()
    )
    loss.backward()
    params = dict(agent.prior.named_parameters())
    params.update({f"actor.{k}": v for k, v in agent.actor.named_parameters()})
    params.update({f"reward.{k}": v for k, v in agent.reward_head.named_parameters()})
    return out, {k: v.grad.clone() for k, v in params.items() if v.grad is not None}


@pytest.mark.parametrize("hold_out_world_model", [False, True])
def test_lean_rollout_matches_torchrl_rollout(toy_agent, hold_out_world_model):
    _, agent = toy_agent
    lean, lean_grads = dream(agent, True, hold_out_world_model)
    reference, reference_grads = dream(agent, False, hold_out_world_model)
    assert lean.batch_size == reference.batch_size == (7, HORIZON)
    assert set(lean.keys(True, True)) == set(reference.keys(True, True))
    for key in reference.keys(True, True):
        torch.testing.assert_close(lean.get(key), reference.get(key), rtol=1e-5, atol=1e-6)
    # The dream moves: states differ between steps, and the reward head's output is used.
    assert not torch.equal(lean["next", "state"][:, 0], lean["next", "state"][:, -1])
    assert set(lean_grads) == set(reference_grads)
    assert any(k.startswith("actor.") for k in lean_grads)
    assert any(k.startswith("reward.") for k in lean_grads) != hold_out_world_model
    for key, expected in reference_grads.items():
        torch.testing.assert_close(lean_grads[key], expected, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1",
    reason="Triton's interpreter emulates each kernel with dozens of ATen copies of its arguments",
)
def test_lean_rollout_launches_fewer_ops(toy_agent):
    """The point of the lean loop: fewer ops (kernels on a GPU) for the same dream."""
    _, agent = toy_agent
    lean = sum(count_ops(lambda: dream(agent, lean=True)).ops.values())
    reference = sum(count_ops(lambda: dream(agent, lean=False)).ops.values())
    assert lean < 0.9 * reference, (lean, reference)


def test_other_rollouts_stay_torchrl(toy_agent):
    """Random actions (no policy) still go through TorchRL's rollout, with its spec checks."""
    _, agent = toy_agent
    start = agent.model_env.reset(start_states(agent, 3))
    out = agent.model_env.rollout(3, auto_reset=False, tensordict=start, break_when_any_done=False)
    assert out.batch_size == (3, 3)
    assert out["action"].shape[-1] == agent.model_env.action_spec.shape[-1]


def test_the_fused_action_sampler_stands_in_only_for_random_draws_of_our_actor(monkeypatch):
    """The dream takes the fused actor sample only where it draws what the policy module would:
    our actor, sampling at random, on tensors the fused kernels run on."""
    from tensordict.nn import TensorDictModule

    from dreamer.actor_critic.actor import fused_action_sampler, make_actor
    from dreamer.world_model import fused_ops
    from dreamer.world_model.networks import ModelSize

    size = ModelSize(
        deter=16, hidden=8, units=8, depth=1, num_categoricals=2, num_classes=4, num_blocks=2
    )
    actor, like = make_actor(size, 3), torch.zeros(2, 8)
    # (set both ways: under Triton's interpreter the kernels also run on CPU tensors)
    monkeypatch.setattr(fused_ops, "use_fused", lambda *tensors: False)
    assert fused_action_sampler(actor, like) is None, "without the kernels, the policy module"
    monkeypatch.setattr(fused_ops, "use_fused", lambda *tensors: True)
    with set_interaction_type(None):  # the default, whatever earlier tests left set
        assert fused_action_sampler(actor, like) is not None, "the default interaction is random"
    with set_exploration_type(ExplorationType.RANDOM):
        assert fused_action_sampler(actor, like) is not None
    for other in (ExplorationType.DETERMINISTIC, ExplorationType.MODE, ExplorationType.MEAN):
        with set_exploration_type(other):
            assert fused_action_sampler(actor, like) is None, other
    plain = TensorDictModule(torch.nn.Linear(8, 3), in_keys=["state"], out_keys=["action"])
    assert fused_action_sampler(plain, like) is None


def test_a_held_out_prior_casts_its_weights_once_per_dream(toy_agent, monkeypatch):
    """Under bf16 autocast, with the world model held out as TorchRL's actor loss holds it, each
    of the prior's parameters is cast at most once per dream, not at every step; the dream and
    its gradients are bitwise those of a cast at every use."""
    from contextlib import nullcontext

    from torch.utils._python_dispatch import TorchDispatchMode

    import dreamer.imagination.imagine as imagine_module

    _, agent = toy_agent
    prior = {p.data_ptr() for p in agent.prior.parameters()}

    class CountPriorCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__ == "_to_copy.default" and args[0].data_ptr() in prior:
                self.count += 1
            return func(*args, **(kwargs or {}))

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16), CountPriorCasts() as counter:
            out, grads = dream(agent, True, hold_out_world_model=True)
        return out, grads, counter.count

    once, once_grads, once_casts = run()
    monkeypatch.setattr(imagine_module, "cast_once", nullcontext)
    every, every_grads, every_casts = run()
    assert 0 < once_casts <= len(prior) < every_casts, (once_casts, len(prior), every_casts)
    assert every_casts >= HORIZON * once_casts
    for key in every.keys(True, True):
        assert torch.equal(once.get(key), every.get(key)), key
    assert once_grads.keys() == every_grads.keys()
    for key, grad in every_grads.items():
        assert torch.equal(once_grads[key], grad), key
