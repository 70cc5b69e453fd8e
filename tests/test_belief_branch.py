"""The filter's products of each carried belief run ahead, on a stream beside the filter's chain.

``tests/test_step_kernels.py`` pins which kernels run there (2 of a step's 12 each way); here:
the loop hands them to the branch at the right points, the branch is in line off CUDA, and on
CUDA the filter and the captured update compute with the branch what they compute without it.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from test_fast_filter import _case
from test_graphed_update import _agent, _sequences, assert_updates_agree

from dreamer.world_model import belief_branch, rssm
from dreamer.world_model.belief_branch import BeliefBranch
from dreamer.world_model.rssm import observe_sequence

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class RecordingBranch(BeliefBranch):
    """In line, recording the loop's calls and what each :meth:`ahead` block made."""

    def __init__(self, stream=None):
        super().__init__(stream)
        self.events: list[str] = []
        self.made: list[list[torch.Tensor]] = []

    @contextmanager
    def ahead(self, *inputs):
        self.events.append("ahead")
        with super().ahead(*inputs) as outputs:
            if self.stream is not None:
                assert torch.cuda.current_stream() == self.stream
            yield outputs
        self.made.append(list(outputs))

    def join(self):
        self.events.append("join")
        super().join()


def test_each_loops_branch_runs_at_its_chains_priority():
    from dreamer.training.concurrent_loss import WORLD_MODEL_PRIORITY

    # The filter runs on the world model's stream; the dream on the actor-critic branch's,
    # which has the default priority (branch_stream).
    assert belief_branch.PRIORITIES == {"filter": WORLD_MODEL_PRIORITY, "dream": 0}


def test_off_cuda_the_branch_runs_in_line():
    branch = belief_branch.belief_branch(torch.zeros(1))
    assert branch.stream is None
    with branch.ahead(torch.zeros(2)) as made:
        made.append(torch.ones(1))
    branch.join()


def test_each_step_joins_the_branch_and_hands_it_the_next_steps_products(monkeypatch):
    prior, posterior, inputs, noise = _case()
    steps = inputs[2].shape[1]
    recording = RecordingBranch()
    monkeypatch.setattr(rssm, "belief_branch", lambda like, loop: recording)
    got = observe_sequence(prior, posterior, *inputs, noise=noise)
    # Step t joins before it reads step t - 1's products; the last carried belief has no reader.
    assert recording.events == ["join", "ahead"] * (steps - 1) + ["join"]
    # Each block made the belief projection's product [B, units] and the block-diagonal
    # layer's [blocks, B, width].
    batch = inputs[2].shape[0]
    assert len(recording.made) == steps - 1
    for projection, own in recording.made:
        assert projection.dim() == 2 and projection.shape[0] == batch
        assert own.dim() == 3 and own.shape[1] == batch
    monkeypatch.undo()
    expected = observe_sequence(prior, posterior, *inputs, noise=noise)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def _filter_on_cuda(branched: bool):
    prior, posterior, inputs, noise = _case()
    prior, posterior = prior.cuda(), posterior.cuda()
    inputs = [x.detach().cuda().requires_grad_(x.requires_grad) for x in inputs]
    previous = belief_branch.set_belief_branch(branched)
    try:
        outputs = observe_sequence(prior, posterior, *inputs, noise=noise.cuda())
    finally:
        belief_branch.set_belief_branch(previous)
    generator = torch.Generator(device="cuda").manual_seed(5)
    objective = sum(
        (torch.randn(value.shape, generator=generator, device="cuda") * value).sum()
        for _, value in sorted(outputs.items())
    )
    leaves = [*prior.parameters(), *posterior.parameters(), *inputs[:3]]
    grads = torch.autograd.grad(objective, leaves, allow_unused=True)
    return outputs, grads


@needs_cuda
def test_on_cuda_the_branch_runs_on_its_stream_with_the_same_results(monkeypatch):
    expected, expected_grads = _filter_on_cuda(False)
    previous = belief_branch.set_belief_branch(True)
    try:
        stream = belief_branch.belief_branch(torch.zeros(1, device="cuda")).stream
    finally:
        belief_branch.set_belief_branch(previous)
    assert stream is not None
    recording = RecordingBranch(stream)
    monkeypatch.setattr(rssm, "belief_branch", lambda like, loop: recording)
    got, grads = _filter_on_cuda(True)
    torch.cuda.synchronize()
    assert "ahead" in recording.events
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)
    for got_grad, want in zip(grads, expected_grads, strict=True):
        if want is not None:
            torch.testing.assert_close(got_grad, want, rtol=1e-6, atol=1e-7)


@needs_cuda
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_the_graphed_update_with_the_branch_matches_the_one_without(smoke_cfg, mixed_precision):
    from dreamer.training.graphed_update import GraphedUpdate

    smoke_cfg.device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    inline_agent, branched_agent = _agent(smoke_cfg, 9), _agent(smoke_cfg, 9)
    branched_agent.loss.load_state_dict(inline_agent.loss.state_dict())
    sample = _sequences(16, 64, obs_dim=4, action_dim=2).to("cuda")
    # Read at capture: each graph keeps the setting it was captured with.
    previous = belief_branch.set_belief_branch(False)
    try:
        inline = GraphedUpdate(inline_agent, sample, mixed_precision=mixed_precision)
        belief_branch.set_belief_branch(True)
        branched = GraphedUpdate(branched_agent, sample, mixed_precision=mixed_precision)
        branch = belief_branch.belief_branch
        streams = {loop: branch(sample["action"], loop).stream for loop in belief_branch.LOOPS}
    finally:
        belief_branch.set_belief_branch(previous)
    # Each loop's branch at its chain's priority.
    assert streams["filter"].priority == branched.capture_stream.priority
    assert streams["dream"].priority == branched.side_stream.priority
    assert_updates_agree(inline, inline_agent, branched, branched_agent)
