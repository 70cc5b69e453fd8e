"""Replay sampling: padded slices with the padding dropped are TorchRL's ragged slices, for a
fixed, small number of host-device syncs per sample instead of one per slice."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch.profiler import ProfilerActivity, profile
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer

from dreamer.replay.buffer import make_replay_buffer, sample_sequences, to_sequences

ENVS, STEPS, BATCH, LENGTH = 16, 40, 8, 8
# What forces a host-device sync when the tensors live on a GPU: reading a device scalar
# (``.item()``, ``bool(t)``, ``torch.arange(t)``) and data-dependent sizes.
SYNCING = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique")


def ragged_buffer(capacity: int, batch: int = BATCH) -> TensorDictReplayBuffer:
    """The buffer as it was before padding: TorchRL's ragged ``strict_length=False`` output."""
    sampler = SliceSampler(
        slice_len=LENGTH,
        cache_values=True,
        end_key=("next", "done"),
        strict_length=False,
        truncated_key=("next", "truncated"),
    )
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(capacity, ndim=2), sampler=sampler, batch_size=batch * LENGTH
    )


def fill(*buffers: TensorDictReplayBuffer, batches: int = 3) -> None:
    """Episodes of random length (many shorter than a slice) with recognisable steps."""
    generator = torch.Generator().manual_seed(0)
    for b in range(batches):
        done = torch.rand(ENVS, STEPS, 1, generator=generator) < 0.08
        step = b * STEPS + torch.arange(STEPS).expand(ENVS, STEPS)
        env = torch.arange(ENVS).unsqueeze(1).expand(ENVS, STEPS)
        batch = TensorDict(
            {
                "obs": torch.stack([env, step], -1).float(),
                "is_init": torch.zeros(ENVS, STEPS, 1, dtype=torch.bool),
                ("next", "done"): done,
                ("next", "terminated"): done,
                ("next", "truncated"): torch.zeros_like(done),
            },
            [ENVS, STEPS],
        )
        for buffer in buffers:
            buffer.extend(batch)


def test_padded_samples_without_padding_equal_the_ragged_samples():
    capacity = ENVS * STEPS * 2  # wraps: the write cursor cuts trajectories too
    padded, ragged = make_replay_buffer(capacity, BATCH, LENGTH, "cpu"), ragged_buffer(capacity)
    fill(padded, ragged)
    padding_seen = 0
    for seed in range(20):
        torch.manual_seed(seed)
        raw = padded.sample()
        padding_seen += int((~raw["collector", "mask"]).sum()) if "collector" in raw.keys() else 0
        torch.manual_seed(seed)
        ours = to_sequences(padded.sample(), LENGTH)
        torch.manual_seed(seed)
        theirs = to_sequences(ragged.sample(), LENGTH)
        assert "collector" not in ours.keys()
        assert ours.shape == theirs.shape
        for key in ("obs", "is_init", ("next", "done"), ("next", "truncated")):
            assert torch.equal(ours[key], theirs[key]), key
    assert padding_seen > 0, "no sample met a short trajectory: the test proves nothing"


def composed_sample(replay, batch_size: int, draws: list[int]) -> TensorDict:
    """What sample_sequences returns, composed from replay.sample and to_sequences: draw
    ``draws[i]`` steps at the i-th draw, cut each to whole rows, concatenate, keep
    ``batch_size`` rows, without the ``index`` entry (where replay.sample read each step)."""
    pieces = [to_sequences(replay.sample(steps), LENGTH).exclude("index") for steps in draws]
    return torch.cat(pieces, 0)[:batch_size]


@pytest.mark.parametrize("batch", [4, 8, 12])
def test_sample_sequences_is_the_composition_of_replay_sample_and_to_sequences(batch, monkeypatch):
    """sample_sequences reads the storage once, at the kept steps of the sampler's indices; its
    batch must be the one composed from replay.sample and to_sequences with the same draws,
    top-up draws included (at every batch size some batch needs a second draw: asserted)."""
    from dreamer.replay import buffer as replay_module

    replay = make_replay_buffer(ENVS * STEPS * 2, batch, LENGTH, "cpu")
    fill(replay)
    steps = math.ceil(batch * replay_module.SAMPLE_MARGIN) * LENGTH
    draw = replay.sampler.sample
    draws_seen = set()
    for seed in range(10):
        calls = []
        monkeypatch.setattr(
            replay.sampler, "sample", lambda *args, _calls=calls: _calls.append(1) or draw(*args)
        )
        torch.manual_seed(seed)
        ours = sample_sequences(replay, batch, LENGTH, "cpu")
        monkeypatch.undo()
        draws_seen.add(len(calls))
        torch.manual_seed(seed)
        theirs = composed_sample(replay, batch, [steps] * len(calls))
        assert ours.shape == theirs.shape == (batch, LENGTH)
        assert set(ours.keys(True, True)) == set(theirs.keys(True, True))
        for key in theirs.keys(True, True):
            assert torch.equal(ours[key], theirs[key]), key
    assert max(draws_seen) > 1, "no batch needed a second draw: the top-up path is untested"


def count_syncs(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key in SYNCING)


@pytest.mark.parametrize("batch", [8, 32])
def test_a_sample_costs_a_few_syncs_not_one_per_slice(batch):
    capacity = ENVS * STEPS * 2
    padded = make_replay_buffer(capacity, batch, LENGTH, "cpu")
    ragged = ragged_buffer(capacity, batch)
    fill(padded, ragged)
    for buffer in (padded, ragged):
        buffer.sample()  # the first sample after an extend finds the episode boundaries
    per_sample = count_syncs(lambda: to_sequences(padded.sample(), LENGTH))
    assert per_sample <= 2, per_sample  # the sampler's `.any()` and our nonzero
    assert count_syncs(lambda: to_sequences(ragged.sample(), LENGTH)) > batch


def test_one_draw_usually_fills_a_training_batch(monkeypatch):
    """Short slices lose rows to padding and truncation; drawing SAMPLE_MARGIN times the slices
    makes a second draw rare (each draw is milliseconds of the training thread's host time)."""
    from dreamer.replay import buffer as replay_module

    generator = torch.Generator().manual_seed(0)
    replay = make_replay_buffer(ENVS * STEPS * 4, BATCH, LENGTH, "cpu")
    for _ in range(4):  # about a third of the slices meet an episode end, as at Isaac scale
        done = torch.rand(ENVS, STEPS, 1, generator=generator) < 0.04
        replay.extend(
            TensorDict(
                {
                    "obs": torch.randn(ENVS, STEPS, 2),
                    "is_init": torch.roll(done, 1, 1),
                    ("next", "done"): done,
                    ("next", "terminated"): done,
                    ("next", "truncated"): torch.zeros_like(done),
                },
                [ENVS, STEPS],
            )
        )
    draws = {}
    for margin in (1.0, replay_module.SAMPLE_MARGIN):
        monkeypatch.setattr(replay_module, "SAMPLE_MARGIN", margin)
        calls = []

        def counted(*args, _calls=calls, _sample=replay.sampler.sample, **kwargs):
            _calls.append(1)
            return _sample(*args, **kwargs)

        monkeypatch.setattr(replay.sampler, "sample", counted)
        torch.manual_seed(0)
        for _ in range(20):
            batch = replay_module.sample_sequences(replay, BATCH, LENGTH, "cpu")
            assert batch.shape == (BATCH, LENGTH)
        monkeypatch.undo()
        draws[margin] = len(calls)
    assert draws[1.0] >= 35  # without the margin nearly every batch needs two draws
    assert draws[replay_module.SAMPLE_MARGIN] <= 24
