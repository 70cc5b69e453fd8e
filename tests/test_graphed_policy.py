"""The acting policy replayed from CUDA graphs acts like the eager policy.

On a CPU the wrapper runs the policy eagerly (same outputs, same random draws). The CUDA tests
(run on a GPU machine) check what capture could break: inputs copied in every step, weights
changed in place after capture reaching the next replay, fresh random draws at every replay,
outputs that the next replay does not overwrite, one graph per (batch, exploration) key.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type

from dreamer.collector.collector import graph_inside, graphed_if_enabled
from dreamer.collector.process import SyncedPolicy
from dreamer.policy.graphed_acting import GraphedPolicy

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@pytest.fixture
def acting(toy_agent):
    env, agent = toy_agent
    reset = env.reset()
    dims = {k: reset[k].shape[-1] for k in ("policy", "state", "belief", "previous_action")}
    return agent.policy.requires_grad_(False), dims


def _mid_episode(dims: dict[str, int], batch: int, device: str, seed: int = 0) -> TensorDict:
    generator = torch.Generator().manual_seed(seed)
    td = TensorDict(
        {k: torch.randn(batch, d, generator=generator) for k, d in dims.items()}, [batch]
    )
    td["is_init"] = torch.zeros(batch, 1, dtype=torch.bool)
    td["is_init"][0] = True  # one env starting an episode: its state must be discarded
    return td.to(device)


def test_on_a_cpu_the_wrapper_is_the_eager_policy(acting):
    policy, dims = acting
    graphed = GraphedPolicy(policy)
    with torch.no_grad():
        torch.manual_seed(3)
        expected = policy(_mid_episode(dims, 6, "cpu"))
        torch.manual_seed(3)
        got = graphed(_mid_episode(dims, 6, "cpu"))
    assert set(got.keys()) == set(expected.keys())
    for key in policy.out_keys:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert not graphed.graphs


def test_capturing_ahead_is_a_no_op_off_cuda(acting):
    policy, dims = acting
    graphed = GraphedPolicy(policy)
    graphed.capture(_mid_episode(dims, 6, "cpu"), InteractionType.RANDOM)
    assert not graphed.graphs and not graphed.failed


def test_a_policy_that_cannot_be_captured_acts_eagerly_with_a_warning(acting):
    """A failed capture must never stop collection: that key runs eagerly from then on."""
    policy, dims = acting

    class Uncapturable(GraphedPolicy):
        attempts = 0

        def _key(self, tensordict):  # pretend to be on a GPU
            return ((6,), "cuda:0", "random")

        def _capture(self, key, tensordict):
            Uncapturable.attempts += 1
            raise RuntimeError("operation not permitted when stream is capturing")

    graphed = Uncapturable(policy)
    with torch.no_grad():
        with pytest.warns(UserWarning, match="not captured"):
            graphed.capture(_mid_episode(dims, 6, "cpu"), InteractionType.RANDOM)
        out = graphed(_mid_episode(dims, 6, "cpu"))
    assert out["action"].shape == (6, 2) and Uncapturable.attempts == 1
    assert graphed.failed == {((6,), "cuda:0", "random")} and not graphed.graphs


def test_the_config_flag_decides_whether_collection_acts_through_graphs(acting, smoke_cfg):
    policy, _ = acting
    assert isinstance(graphed_if_enabled(smoke_cfg, policy), GraphedPolicy)
    smoke_cfg.collector.graph_policy = False
    assert graphed_if_enabled(smoke_cfg, policy) is policy


def test_a_weight_syncing_wrapper_keeps_its_weights_and_graphs_only_the_policy(acting, smoke_cfg):
    """The process worker's weight copies must stay outside the graph and land in the policy."""
    import multiprocessing as mp

    policy, _ = acting
    shared = [
        {k: v.clone() for k, v in SyncedPolicy(policy, [], None, None).weights.items()}
        for _ in range(2)
    ]
    synced = SyncedPolicy(policy, shared, mp.Value("l", 0), mp.Lock())
    weights = dict(synced.weights)
    graph_inside(smoke_cfg, synced)
    assert isinstance(synced.policy, GraphedPolicy) and synced.policy.policy is policy
    assert all(synced.weights[k] is weights[k] for k in weights)
    name = next(iter(weights))
    shared[0][name].fill_(0.25)
    synced.pull()
    assert bool((dict(policy.state_dict(keep_vars=True))[name] == 0.25).all())


@cuda
def test_replays_match_the_eager_policy_and_follow_weights_and_inputs(acting, smoke_cfg):
    from toy_env import ToyBatchedEnv

    from dreamer.agent import build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model.networks import model_size_from_config

    torch.backends.cuda.matmul.allow_tf32 = False
    smoke_cfg.device = "cuda"  # built there, as training builds it (bounds and buffers too)
    size = model_size_from_config(smoke_cfg.model)
    env = add_acting_state(add_episode_stats(ToyBatchedEnv(6)), size, 2)
    policy = build_agent(smoke_cfg, env).policy.requires_grad_(False)
    dims = acting[1]
    graphed = GraphedPolicy(policy)
    with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
        for seed in range(3):  # new inputs every step reach the graph
            td = _mid_episode(dims, 6, "cuda", seed)
            expected = policy(td.clone())
            got = graphed(td.clone())
            # The belief and the encoding are deterministic given the inputs.
            for key in ("belief", "encoded_latents"):
                torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
            assert bool((got["action"].abs() <= 1).all())
        assert not graphed.failed, "capture failed: see the warning"
        assert len(graphed.graphs) == 1
        # A weight changed in place after capture (the learner's optimizer, the worker's copy).
        for parameter in policy.parameters():
            parameter.mul_(0.5)
        td = _mid_episode(dims, 6, "cuda", 7)
        torch.testing.assert_close(
            graphed(td.clone())["belief"], policy(td.clone())["belief"], rtol=1e-5, atol=1e-5
        )
        # Fresh noise at every replay, and the returned tensors are not overwritten later.
        first = graphed(td.clone())
        kept = first["action"].clone()
        second = graphed(td.clone())
        assert not torch.equal(first["action"], second["action"])
        assert torch.equal(first["action"], kept)
        graphed(_mid_episode(dims, 4, "cuda"))  # another batch shape: a second graph
        assert len(graphed.graphs) == 2
    # Captured ahead (as the async collector does on the training thread), then replayed.
    ahead = GraphedPolicy(policy, priority=-1)
    ahead.capture(_mid_episode(dims, 6, "cuda"), InteractionType.RANDOM)
    assert len(ahead.graphs) == 1
    assert ahead.capture_stream.priority == -1 and graphed.capture_stream.priority == 0
    with torch.no_grad(), set_interaction_type(InteractionType.RANDOM):
        td = _mid_episode(dims, 6, "cuda", 9)
        torch.testing.assert_close(
            ahead(td.clone())["belief"], policy(td.clone())["belief"], rtol=1e-5, atol=1e-5
        )
    assert len(ahead.graphs) == 1


@cuda
def test_collection_on_a_gpu_acts_through_a_captured_graph():
    """The collector calls the policy without gradients, so the wrapper replays, not falls back."""
    from conftest import load_config

    from dreamer.agent import build_agent
    from dreamer.collector.collector import make_batch_source
    from dreamer.training.loop import make_training_env

    cfg = load_config(
        "profile=smoke",
        "task=Isaac-Cartpole-v0",
        "device=cuda",
        "env.device=cuda",
        "env.num_envs=4",
        "collector.frames_per_batch=32",
        "collector.init_random_frames=0",
        "collector.total_frames=64",
    )
    cfg.compile.enabled = False
    env = make_training_env(cfg)
    source = make_batch_source(cfg, env, build_agent(cfg, env).policy)
    assert isinstance(source.policy, GraphedPolicy)
    batch = next(iter(source))
    assert batch.shape == (4, 8) and bool(batch["action"].abs().le(1).all())
    # The collector acts under RANDOM exploration (it also calls the policy once, outside any
    # exploration context, when it is built: a graph of its own).
    keys = [key[2] for key in source.policy.graphs]
    assert str(InteractionType.RANDOM) in keys, keys
    assert not source.policy.failed
    source.shutdown()
