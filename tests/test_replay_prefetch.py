"""Prefetched replay samples: sampled beside the running update, never racing an extend.

The CUDA tests (run on a GPU machine) hold one stream busy with ``torch.cuda._sleep`` so that a
missing wait shows up as a wrong value every time rather than by chance.
"""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch
from tensordict import TensorDict

from dreamer.replay.buffer import make_replay_buffer, sample_sequences
from dreamer.replay.prefetch import SamplePrefetcher

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="streams need a GPU")
ENVS, STEPS, BATCH, LENGTH = 8, 32, 4, 8
SLEEP_CYCLES = int(5e8)  # a few hundred milliseconds of GPU time


def _batch(value: float, device: str) -> TensorDict:
    done = torch.zeros(ENVS, STEPS, 1, dtype=torch.bool)
    done[:, -1] = True
    return TensorDict(
        {
            "obs": torch.full((ENVS, STEPS, 3), value),
            "is_init": torch.zeros(ENVS, STEPS, 1, dtype=torch.bool),
            ("next", "done"): done,
            ("next", "terminated"): done,
            ("next", "truncated"): torch.zeros_like(done),
        },
        [ENVS, STEPS],
    ).to(device)


def _prefetcher(device: str, sleep_before_sample: bool = False):
    replay = make_replay_buffer(ENVS * STEPS, BATCH, LENGTH, device)
    replay.extend(_batch(1.0, device))
    draw = partial(sample_sequences, replay, BATCH, LENGTH, device)

    def sample():
        if sleep_before_sample:  # a slow sample: its reads land late on its stream
            torch.cuda._sleep(SLEEP_CYCLES)
        return draw()

    return replay, SamplePrefetcher(sample, torch.device(device))


def test_off_cuda_every_batch_is_sampled_when_taken():
    calls = []
    prefetcher = SamplePrefetcher(lambda: calls.append(1) or len(calls), torch.device("cpu"))
    prefetcher.prefetch()
    assert calls == [] and not prefetcher.enabled
    assert prefetcher.take() == 1 and prefetcher.take() == 2


@cuda
def test_the_next_batch_is_sampled_while_the_update_runs():
    _, prefetcher = _prefetcher("cuda")
    prefetcher.take()  # first use: cuBLAS, caches
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)  # the "update" on the training stream
    started = time.perf_counter()
    prefetcher.prefetch()
    sampling_s = time.perf_counter() - started
    update_left = not torch.cuda.current_stream().query()
    assert update_left, "the update should still be running"
    assert sampling_s < 0.1, f"the sample waited for the update ({sampling_s:.3f} s)"
    assert bool((prefetcher.take()["obs"] == 1.0).all())


@cuda
def test_an_extend_never_overwrites_rows_the_pending_sample_has_not_read():
    replay, prefetcher = _prefetcher("cuda", sleep_before_sample=True)
    torch.cuda.synchronize()
    prefetcher.prefetch()  # its reads wait behind a sleep on the side stream
    prefetcher.before_extend()
    replay.extend(_batch(float("nan"), "cuda"))  # the whole storage, on the training stream
    prefetcher.after_extend()
    batch = prefetcher.take()
    assert not bool(batch["obs"].isnan().any()), "the extend tore the prefetched batch"


@cuda
def test_a_sample_after_an_extend_sees_its_rows():
    replay, prefetcher = _prefetcher("cuda")
    prefetcher.take()
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)  # the extend's writes land late on the training stream
    prefetcher.before_extend()
    replay.extend(_batch(2.0, "cuda"))
    prefetcher.after_extend()
    prefetcher.prefetch()
    assert bool((prefetcher.take()["obs"] == 2.0).all()), "the sample read rows before the extend"
