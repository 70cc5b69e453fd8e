"""Fake worker parts for ``ProcessCollector`` tests: recognisable batches, no real env.

Imported by the spawned worker (it unpickles :func:`fake_worker` from here), so it stays light.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn


class Probe(nn.Module):
    """Two large weights; each step reports their min and max (equal iff none is torn)."""

    def __init__(self, size: int = 200_000):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(size))
        self.b = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = torch.stack([self.a.min(), self.a.max(), self.b.min(), self.b.max()])
        return seen.expand(x.shape[0], 4)


def probe_policy() -> TensorDictModule:
    return TensorDictModule(Probe(), in_keys=["x"], out_keys=["seen"])


class FakeCollector:
    """Batch ``i`` ``[envs, steps]``: ``obs == id == i`` everywhere, ``twice == 2 i``, ``t`` counts
    steps since the start, ``draw`` is one number from the env's generator; with ``act`` each
    step also records what the acting policy saw (``seen``)."""

    def __init__(self, env, policy, count, envs, steps, act=False, fail_after=None, how="raise"):
        self.env, self.policy, self.count, self.envs, self.steps = env, policy, count, envs, steps
        self.act, self.fail_after, self.how = act, fail_after, how

    def __iter__(self):
        for i in range(self.count):
            if i == self.fail_after:
                if self.how == "exit":
                    os._exit(3)
                if self.how == "hang":
                    time.sleep(3600)
                raise ValueError("env exploded")
            value = torch.full((self.envs, self.steps, 16), float(i))
            false = torch.zeros(self.envs, self.steps, 1, dtype=torch.bool)
            batch = TensorDict(
                {
                    "obs": value,
                    "twice": value * 2,
                    "id": torch.full((self.envs, self.steps), i),
                    "t": (i * self.steps + torch.arange(self.steps)).expand(self.envs, -1),
                    "draw": torch.full((self.envs, self.steps), int(self.env._rng.integers(2**30))),
                    "unsent": torch.zeros(self.envs, self.steps),
                    ("next", "done"): false,
                    ("next", "truncated"): false,
                },
                [self.envs, self.steps],
            )
            if self.act:
                seen = [
                    self.policy(TensorDict({"x": torch.zeros(self.envs, 1)}, [self.envs]))["seen"]
                    for _ in range(self.steps)
                ]
                batch["seen"] = torch.stack(seen, 1)
            yield batch

    def shutdown(self):
        pass


def assert_from_whole_batches(sample: TensorDict, newest: int) -> None:
    """Every sampled element comes from one fake batch, written whole, none newer than ``newest``:
    no NaN, and both keys and the id agree."""
    obs = sample["obs"]
    assert not torch.isnan(obs).any()
    assert torch.equal(sample["twice"], obs * 2)
    assert torch.equal(obs[:, 0], sample["id"].to(obs.dtype))
    assert int(sample["id"].max()) <= newest


def fake_env(seed: int = 0) -> SimpleNamespace:
    """Stands in for the embedded env: what ``env_generator`` reads is ``_rng``."""
    return SimpleNamespace(_rng=np.random.default_rng(seed))


def fake_worker(count, envs, steps, act=False, fail_after=None, how="raise"):
    """The :data:`~dreamer.collector.process.WorkerFactory` of the tests."""
    env = fake_env()
    return (
        env,
        probe_policy(),
        lambda policy: FakeCollector(env, policy, count, envs, steps, act, fail_after, how),
    )
