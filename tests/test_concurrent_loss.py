"""The actor-critic branch on a second stream computes exactly what ``DreamerV3Loss`` computes.

On a CPU the streams are off, so :func:`dreamer_losses` must equal TorchRL's forward bitwise: same
sub-losses, same order, same random draws. On CUDA the graphed update with the side stream must
give the losses and gradients of the one without it (a missing stream sync would read unfinished
or reused memory; float32 with TF32 off, so the only differences are summation orders: 1e-5).
"""

from __future__ import annotations

import pytest
import torch
from test_graphed_update import _agent, _sequences, assert_updates_agree

from dreamer.training.concurrent_loss import branch_stream, dreamer_losses


def test_matches_torchrl_dreamer_loss_forward_bitwise(smoke_cfg):
    agent = _agent(smoke_cfg, 5)
    sample = _sequences(3, 8, obs_dim=4, action_dim=2)
    torch.manual_seed(1)
    expected = agent.loss(sample.clone())
    torch.manual_seed(1)
    got = dreamer_losses(agent.loss, sample.clone())
    assert set(got.keys(True, True)) == set(expected.keys(True, True))
    for key in expected.keys(True, True):
        assert torch.equal(got[key], expected[key]), key
    assert got["loss_replay_value"] != 0  # the replay critic loss is on in the smoke profile


def test_the_replay_critics_passes_come_before_its_returns(smoke_cfg, monkeypatch):
    """The passes over the replayed states need no imagined return, so the update can queue
    them before it waits for the returns (on CUDA: while the branch imagines). TorchRL's
    ``replay_value_loss`` computes the returns first."""
    from dreamer.actor_critic import losses

    agent = _agent(smoke_cfg, 18)
    calls = []
    passes, returns = agent.loss.value_loss._replay_predictions, losses.replay_lambda_returns

    def logged_passes(*args, **kwargs):
        calls.append("pass")
        return passes(*args, **kwargs)

    def logged_returns(*args, **kwargs):
        calls.append("returns")
        return returns(*args, **kwargs)

    monkeypatch.setattr(agent.loss.value_loss, "_replay_predictions", logged_passes)
    monkeypatch.setattr(losses, "replay_lambda_returns", logged_returns)
    dreamer_losses(agent.loss, _sequences(2, 6, obs_dim=4, action_dim=2), backward=True)
    assert calls == ["pass", "pass", "returns"]  # the critic's, the slow critic's, the returns


def test_the_branch_gets_gradients_into_actor_critic_and_world_model(smoke_cfg):
    agent = _agent(smoke_cfg, 6)
    losses = dreamer_losses(agent.loss, _sequences(2, 6, obs_dim=4, action_dim=2))
    sum(v.sum() for k, v in losses.items() if k.startswith("loss_")).backward()
    for name in ("actor", "value_mlp", "prior", "posterior", "encoder"):
        grads = [p.grad for p in getattr(agent, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_no_side_stream_off_cuda_or_when_disabled():
    assert branch_stream(torch.device("cpu")) is None
    if torch.cuda.is_available():
        assert branch_stream(torch.device("cuda"), enabled=False) is None
        assert isinstance(branch_stream(torch.device("cuda")), torch.cuda.Stream)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_update_with_the_side_stream_matches_one_stream(smoke_cfg):
    from dreamer.training.graphed_update import GraphedUpdate

    smoke_cfg.device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    # A capture on torch.cuda.graph's default stream, as the acting policy's graphs make: it
    # creates the process's shared capture stream, which no update graph may use.
    counter = torch.zeros(1, device="cuda")
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        counter.add_(1)
    shared = torch.cuda.graph.default_capture_stream
    serial_agent, branched_agent = _agent(smoke_cfg, 9), _agent(smoke_cfg, 9)
    branched_agent.loss.load_state_dict(serial_agent.loss.state_dict())
    sample = _sequences(16, 64, obs_dim=4, action_dim=2).to("cuda")
    serial = GraphedUpdate(serial_agent, sample, concurrent_branches=False)
    branched = GraphedUpdate(branched_agent, sample, concurrent_branches=True)
    assert branched.side_stream is not None and serial.side_stream is None
    # The world model's branch is captured above the actor-critic branch (lower number first).
    assert branched.capture_stream.priority < branched.side_stream.priority
    # Each update graph is captured on a stream of its own, never on torch.cuda.graph's shared
    # default: async training with that stream (shared with the acting policy's capture) hung
    # the GPU in 2 of 2 runs on the H100, and ran with a stream of its own.
    for update in (serial, branched):
        assert update.capture_stream.cuda_stream != shared.cuda_stream
    assert_updates_agree(serial, serial_agent, branched, branched_agent)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_replay_critic_waits_on_the_imagined_returns_event(smoke_cfg, monkeypatch):
    smoke_cfg.device = "cuda"
    agent = _agent(smoke_cfg, 12)
    recorded = []
    original = agent.loss.actor_loss.lambda_target

    def lambda_target(*args, **kwargs):
        target = original(*args, **kwargs)
        recorded.append(list(agent.loss.actor_loss.target_events))
        return target

    monkeypatch.setattr(agent.loss.actor_loss, "lambda_target", lambda_target)
    waited, wait_event = [], torch.cuda.Stream.wait_event

    def record_wait(self, event):
        waited.append(event)
        return wait_event(self, event)

    monkeypatch.setattr(torch.cuda.Stream, "wait_event", record_wait)
    side = branch_stream(torch.device("cuda"))
    sample = _sequences(4, 8, obs_dim=4, action_dim=2).to("cuda")
    dreamer_losses(agent.loss, sample, side, backward=True)
    torch.cuda.synchronize()
    # One lambda-target call, which recorded one event; the main stream waited on it.
    assert len(recorded) == 1 and len(recorded[0]) == 1
    assert any(event is recorded[0][0] for event in waited)
    assert agent.loss.actor_loss.target_events is None


def test_the_losses_run_without_autocasts_cache_of_weight_casts(smoke_cfg, monkeypatch):
    # Shared cached casts made the captured bf16 update's gradients NaN (the CUDA test below);
    # each op must cast for itself, on the world model's side and the actor-critic side alike.
    agent = _agent(smoke_cfg, 13)
    seen = {}
    for name in ("model_loss", "actor_loss", "value_loss"):
        module = getattr(agent.loss, name)

        def spy(*args, _name=name, _original=module.forward, **kwargs):
            seen[_name] = (torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled())
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "forward", spy)
    sample = _sequences(2, 6, obs_dim=4, action_dim=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_cache_enabled()
        dreamer_losses(agent.loss, sample, backward=True)
        assert torch.is_autocast_cache_enabled()  # restored on the way out
    assert seen == {name: (True, False) for name in ("model_loss", "actor_loss", "value_loss")}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_graphed_bf16_update_keeps_finite_gradients():
    # With autocast's cached casts shared by the two streams, this update's gradient norm was
    # NaN from the third replay on (small12m, 16x64, Ant's shapes; H100, 2026-12-07), while
    # float32, eager bf16 and the unfused kernels stayed finite.
    from dreamer.agent import build_agent
    from dreamer.config import load_config
    from dreamer.training.graphed_update import GraphedUpdate
    from dreamer.training.loop import make_training_env

    cfg = load_config("model=small12m", "device=cuda", "env.num_envs=4", "env.backend=mujoco")
    cfg.compile.enabled = False
    env = make_training_env(cfg)
    torch.manual_seed(0)
    agent = build_agent(cfg, env)
    obs_dim, action_dim = env.observation_spec["policy"].shape[-1], env.action_spec.shape[-1]
    batches = [_sequences(16, 64, obs_dim, action_dim).to("cuda") for _ in range(2)]
    for batch in batches[1:]:
        batch.apply_(lambda t: t.roll(1, 0) if t.is_floating_point() else t)
    update = GraphedUpdate(agent, batches[0], mixed_precision=True, concurrent_branches=True)
    assert update.side_stream is not None
    for step in range(8):
        metrics = update(batches[step % 2])
        for key in [k for k in metrics.keys() if k.startswith("loss_")] + ["grad_norm"]:
            assert torch.isfinite(metrics[key]).all(), f"{key} at update {step}"
    assert all(torch.isfinite(p).all() for p in agent.loss.parameters())


def test_the_replay_critic_accumulates_into_the_critic_only_after_the_branch(smoke_cfg):
    # A backward() of the replay critic's loss would accumulate into the critic's parameters,
    # whose accumulation runs on the actor-critic stream, and so make the world model's stream
    # wait for that whole branch before the filter's backward (the CUDA test below). Its
    # gradients are instead added once the branch's backward is done: one accumulation each.
    agent = _agent(smoke_cfg, 14)
    accumulated = {}
    for name, param in agent.value_mlp.named_parameters():
        param.register_post_accumulate_grad_hook(
            lambda p, _name=name: accumulated.update({_name: accumulated.get(_name, 0) + 1})
        )
    reference = _agent(smoke_cfg, 14)
    sample = _sequences(2, 6, obs_dim=4, action_dim=2)
    torch.manual_seed(2)
    dreamer_losses(agent.loss, sample.clone(), backward=True)
    names = [name for name, _ in agent.value_mlp.named_parameters()]
    assert accumulated == {name: 1 for name in names}
    # ... and the critic's gradients still hold the replay critic's share.
    torch.manual_seed(2)
    losses = reference.loss(sample.clone())
    sum(v.sum() for k, v in losses.items() if k.startswith("loss_")).backward()
    for (name, got), want in zip(
        agent.value_mlp.named_parameters(), reference.value_mlp.parameters(), strict=True
    ):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-7, msg=name)


def _busy_then_reached(agent, busy_on: tuple, reached: tuple) -> bool:
    """Whether the point ``reached`` was passed while the stream of ``busy_on`` was still busy.

    Runs one eager ``dreamer_losses`` with its backward on CUDA, with the call
    ``busy_on = (owner, name, before)`` wrapped to queue about two seconds of spinning on its
    stream (``stream_busy.py``) before or after it runs, and the call ``reached = (owner,
    name)`` wrapped to record an event on its stream after it runs (its last call). Two seconds
    are far longer than the host takes to queue the rest of a warmed-up update, so the event
    completing first means that its stream did not wait for the busy one.
    """
    from stream_busy import keep_busy, spin_iterations

    side = branch_stream(torch.device("cuda"))
    sample = _sequences(4, 8, obs_dim=4, action_dim=2).to("cuda")
    # A first update compiles every kernel, so the host queues the measured one quickly.
    dreamer_losses(agent.loss, sample, side, backward=True)
    iterations, events = spin_iterations(2.0), {}
    owner, name, before = busy_on
    busy_call = getattr(owner, name)

    def busy(*args, **kwargs):
        if before:
            events["busy"] = keep_busy(iterations)
        result = busy_call(*args, **kwargs)
        if not before:
            events["busy"] = keep_busy(iterations)
        return result

    reached_call = getattr(*reached)

    def mark(*args, **kwargs):
        result = reached_call(*args, **kwargs)
        events["reached"] = torch.cuda.Event()
        events["reached"].record()
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, busy)
        patch.setattr(*reached, mark)
        torch.cuda.synchronize()
        dreamer_losses(agent.loss, sample, side, backward=True)
    events["reached"].synchronize()
    still_busy = not events["busy"].query()
    torch.cuda.synchronize()
    return still_busy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_filters_backward_waits_for_the_returns_not_the_whole_branch(smoke_cfg):
    from dreamer.world_model.filter_cut import FilterCut

    smoke_cfg.device = "cuda"
    agent = _agent(smoke_cfg, 15)
    # Busy on the branch after the returns (its critic loss); reached: the world model's stream
    # collecting the gradients for the filter's backward.
    after_value_loss = (agent.loss.value_loss, "forward", False)
    assert _busy_then_reached(agent, after_value_loss, (FilterCut, "backward_targets"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_replay_critics_passes_run_before_the_imagined_returns_exist(smoke_cfg):
    smoke_cfg.device = "cuda"
    agent = _agent(smoke_cfg, 16)
    # Busy on the branch just before its returns; reached: the critic's and the slow critic's
    # passes over the replayed states, on the world model's stream.
    before_returns = (agent.loss.actor_loss, "lambda_target", True)
    passes = (agent.loss.value_loss, "_replay_predictions")
    assert _busy_then_reached(agent, before_returns, passes)
