"""The four spec-shape fixes the product must keep; each test fails if its fix is removed."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Unbounded
from torchrl.envs import TensorDictPrimer, TransformedEnv
from torchrl.envs.model_based.dreamer import DreamerEnv
from toy_env import ToyBatchedEnv

from dreamer.imagination.model_env import copy_unbatched_specs
from dreamer.policy.acting import make_state_primer
from dreamer.replay.buffer import (
    drop_padding,
    make_replay_buffer,
    select_for_storage,
    to_sequences,
)
from dreamer.world_model.networks import ModelSize, make_rssm_cells
from dreamer.world_model.rssm import observe_sequence

SIZE = ModelSize(
    deter=16, hidden=8, units=8, depth=1, num_categoricals=4, num_classes=4, num_blocks=2
)


# -- fix 1: the primer expands its specs to the env batch ----------------------------------------
def test_primer_without_expand_specs_conflicts_with_batched_env():
    primer = TensorDictPrimer(
        random=False, default_value=0.0, state=Unbounded(SIZE.stoch), belief=Unbounded(SIZE.deter)
    )
    env = TransformedEnv(ToyBatchedEnv(5), primer)
    with pytest.raises(RuntimeError, match="expand_specs"):
        env.observation_spec  # noqa: B018 - building the specs is what fails


def test_primer_with_expand_specs_gives_batched_state():
    env = TransformedEnv(ToyBatchedEnv(5), make_state_primer(SIZE, action_dim=2))
    td = env.reset()
    assert td["state"].shape == (5, SIZE.stoch)
    assert td["belief"].shape == (5, SIZE.deter)
    assert td["previous_action"].shape == (5, 2)
    assert env.observation_spec["belief"].shape == (5, SIZE.deter)


# -- fix 2: the imagination env is unbatched ------------------------------------------------------
def _imagination_env(unbatch: bool, num_envs: int = 6):
    from dreamer.imagination.model_env import make_imagination_env

    env = TransformedEnv(ToyBatchedEnv(num_envs), make_state_primer(SIZE, action_dim=2))
    prior, _ = make_rssm_cells(2, SIZE)
    reward = torch.nn.Linear(SIZE.feature, SIZE.num_bins)
    from torchrl.modules import SymExpTwoHot

    model_env = make_imagination_env(
        prior, reward, SymExpTwoHot(SIZE.num_bins), env, SIZE.stoch, SIZE.deter
    )
    if not unbatch:  # what TorchRL's set_specs_from_env alone leaves behind
        DreamerEnv.set_specs_from_env(model_env, env)
    return model_env


def _start_states(batch: int) -> TensorDict:
    return TensorDict(
        {"state": torch.randn(batch, SIZE.stoch), "belief": torch.randn(batch, SIZE.deter)}, [batch]
    )


def test_imagination_rollout_from_b_states_gives_b_by_h_actions():
    model_env = _imagination_env(unbatch=True, num_envs=6)
    assert model_env.batch_size == ()
    assert model_env.action_spec.shape == (2,)
    start = model_env.reset(_start_states(5))
    rollout = model_env.rollout(4, auto_reset=False, tensordict=start, break_when_any_done=False)
    assert rollout["action"].shape == (5, 4, 2)
    assert rollout["next", "reward"].shape == (5, 4, 1)


def test_batched_specs_would_double_batch_actions():
    model_env = _imagination_env(unbatch=False, num_envs=6)
    assert model_env.action_spec.shape == (6, 2)
    assert model_env.action_spec.rand((5,)).shape == (5, 6, 2)


def test_copy_unbatched_specs_keeps_keys_and_dtypes():
    env = TransformedEnv(ToyBatchedEnv(3), make_state_primer(SIZE, action_dim=2))
    model_env = _imagination_env(unbatch=True, num_envs=3)
    copy_unbatched_specs(model_env, env)
    assert set(model_env.observation_spec.keys()) == set(env.observation_spec.keys())
    for key in env.observation_spec.keys():
        assert model_env.observation_spec[key].dtype == env.observation_spec[key].dtype
        assert model_env.observation_spec[key].shape == env.observation_spec[key].shape[1:]


# -- fix 3: truncate, reshape, and never leak state across joins ---------------------------------
def _filled_buffer(batch_length: int):
    from tensordict.nn import TensorDictModule
    from torchrl.collectors import Collector
    from torchrl.envs import InitTracker

    env = TransformedEnv(ToyBatchedEnv(8), InitTracker())
    policy = TensorDictModule(
        lambda obs: torch.rand(obs.shape[0], 2) * 2 - 1, in_keys=["policy"], out_keys=["action"]
    )
    collector = Collector(env, policy, frames_per_batch=8 * 20, total_frames=8 * 40)
    buffer = make_replay_buffer(8 * 200, batch_size=12, batch_length=batch_length, device="cpu")
    for batch in collector:
        buffer.extend(select_for_storage(batch))
        # Sample between extends: the sampler's cached episode boundaries must follow the writes.
        to_sequences(buffer.sample(), batch_length)
    collector.shutdown()
    return buffer


def test_samples_are_truncated_to_a_multiple_of_the_sequence_length():
    torch.manual_seed(0)
    buffer = _filled_buffer(batch_length=6)
    sizes = set()
    for _ in range(20):
        flat = drop_padding(buffer.sample())  # the ragged sample (see dreamer.replay.buffer)
        sizes.add(flat.shape[0])
        seq = to_sequences(flat, 6)
        assert seq.shape[1] == 6
        assert seq.shape[0] == flat.shape[0] // 6
    assert any(size % 6 for size in sizes), "strict_length=False should return ragged sizes here"


def test_is_init_marks_every_episode_start_and_every_join():
    torch.manual_seed(1)
    buffer = _filled_buffer(batch_length=6)
    joins_seen = 0
    for _ in range(20):
        seq = to_sequences(buffer.sample(), 6)
        step = seq["policy"][..., 1]
        env_id = seq["policy"][..., 2]
        is_init = seq["is_init"].squeeze(-1)
        continues = (step[:, 1:] == step[:, :-1] + 1) & (env_id[:, 1:] == env_id[:, :-1])
        # wherever a row does not continue the previous step's trajectory, the RSSM must restart
        assert bool(is_init[:, 1:][~continues].all())
        assert bool(is_init[:, 0].all())
        assert bool(is_init[step == 0].all())
        joins_seen += int((~continues).sum())
    assert joins_seen > 0


def test_fixed_shape_samples_keep_every_join_marked():
    from dreamer.replay.buffer import sample_sequences

    torch.manual_seed(2)
    buffer = _filled_buffer(batch_length=6)
    for _ in range(10):
        seq = sample_sequences(buffer, 12, 6, "cpu")
        assert seq.shape == (12, 6)
        step, env_id = seq["policy"][..., 1], seq["policy"][..., 2]
        continues = (step[:, 1:] == step[:, :-1] + 1) & (env_id[:, 1:] == env_id[:, :-1])
        is_init = seq["is_init"].squeeze(-1)
        assert bool(is_init[:, 1:][~continues].all()) and bool(is_init[:, 0].all())


def test_rssm_state_does_not_leak_across_a_join():
    prior, posterior = make_rssm_cells(2, SIZE)
    batch, steps, join = 3, 8, 4
    embed_root, embed_next = (
        torch.randn(batch, steps, SIZE.units),
        torch.randn(batch, steps, SIZE.units),
    )
    action = torch.randn(batch, steps, 2)
    is_init = torch.zeros(batch, steps, dtype=torch.bool)
    is_init[:, join] = True
    changed_root, changed_next, changed_action = (
        embed_root.clone(),
        embed_next.clone(),
        action.clone(),
    )
    changed_root[:, :join] += 5.0
    changed_next[:, :join] += 5.0
    changed_action[:, :join] *= -1
    torch.manual_seed(0)
    first = observe_sequence(prior, posterior, embed_root, embed_next, action, is_init)
    torch.manual_seed(0)
    second = observe_sequence(prior, posterior, changed_root, changed_next, changed_action, is_init)
    assert not torch.allclose(first["belief"][:, :join], second["belief"][:, :join])
    torch.testing.assert_close(first["belief"][:, join:], second["belief"][:, join:])
    torch.testing.assert_close(
        first["posterior_logits"][:, join:], second["posterior_logits"][:, join:]
    )
    # without the reset flag the change before the join reaches the steps after it
    torch.manual_seed(0)
    leaky = observe_sequence(
        prior, posterior, changed_root, changed_next, changed_action, torch.zeros_like(is_init)
    )
    assert not torch.allclose(first["belief"][:, join:], leaky["belief"][:, join:])


# -- fix 4: only the four MLPs are compiled ------------------------------------------------------
def test_only_the_four_mlps_are_compiled_and_a_step_runs(smoke_cfg):
    from toy_env import ToyBatchedEnv as Toy

    from dreamer.agent import COMPILED_MLPS, build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.training.update import update_step
    from dreamer.world_model.networks import model_size_from_config

    smoke_cfg.compile.enabled = True
    smoke_cfg.compile.backend = "aot_eager"
    env = add_acting_state(add_episode_stats(Toy(4)), model_size_from_config(smoke_cfg.model), 2)
    agent = build_agent(smoke_cfg, env)
    compiled = {
        name
        for name in vars(agent)
        if isinstance(getattr(agent, name), torch._dynamo.eval_frame.OptimizedModule)
    }
    assert compiled == set(COMPILED_MLPS) == {"encoder", "decoder", "reward_head", "value_mlp"}
    for module in agent.loss.modules():
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            assert module._orig_mod.__class__.__name__ in {
                "SymlogEncoder",
                "DreamerV3MLP",
                "SplitInputMLP",
            }
    assert not isinstance(agent.loss, torch._dynamo.eval_frame.OptimizedModule)
    seq = TensorDict(
        {
            "policy": torch.randn(2, 5, 4),
            "action": torch.rand(2, 5, 2) * 2 - 1,
            "is_init": torch.zeros(2, 5, 1, dtype=torch.bool),
            "next": {
                "policy": torch.randn(2, 5, 4),
                "reward": torch.randn(2, 5, 1),
                "done": torch.zeros(2, 5, 1, dtype=torch.bool),
                "terminated": torch.zeros(2, 5, 1, dtype=torch.bool),
                "truncated": torch.zeros(2, 5, 1, dtype=torch.bool),
            },
        },
        [2, 5],
    )
    before = [p.detach().clone() for p in agent.decoder.parameters()]
    metrics = update_step(agent, seq)
    assert torch.isfinite(metrics["loss_total"])
    assert any(
        not torch.equal(a, b.detach())
        for a, b in zip(before, agent.decoder.parameters(), strict=False)
    )
