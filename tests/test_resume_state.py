"""What a checkpoint holds and how it comes back: weights, optimizer, RNGs, replay, safe files."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import subprocess_env
from tensordict import TensorDict

from dreamer.replay.buffer import make_replay_buffer
from dreamer.training.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dreamer.training.replay_state import load_replay_state, replay_state
from dreamer.training.restore import (
    agent_state,
    load_agent_state,
    resume_training,
    training_payload,
)
from dreamer.training.update import update_step

ROOT = Path(__file__).resolve().parents[1]


def _toy_agent(cfg, seed: int):
    from toy_env import ToyBatchedEnv

    from dreamer.agent import build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model.networks import model_size_from_config

    torch.manual_seed(seed)
    env = add_acting_state(
        add_episode_stats(ToyBatchedEnv(4)), model_size_from_config(cfg.model), 2
    )
    return env, build_agent(cfg, env)


def _sequences(batch: int = 2, length: int = 5) -> TensorDict:
    flag = torch.zeros(batch, length, 1, dtype=torch.bool)
    return TensorDict(
        {
            "policy": torch.randn(batch, length, 4),
            "action": torch.rand(batch, length, 2) * 2 - 1,
            "is_init": flag.clone(),
            "next": {
                "policy": torch.randn(batch, length, 4),
                "reward": torch.randn(batch, length, 1),
                "done": flag.clone(),
                "terminated": flag.clone(),
                "truncated": flag.clone(),
            },
        },
        [batch, length],
    )


def test_resumed_agent_takes_the_same_next_update_as_the_original(smoke_cfg, tmp_path):
    env_a, original = _toy_agent(smoke_cfg, seed=0)
    seq = _sequences()
    update_step(original, seq)  # optimizer moments and the slow critic now differ from init
    counters = {"updates": 1, "frames": 64, "owed_updates": 0.25}
    save_checkpoint(tmp_path / "last.pt", training_payload(original, smoke_cfg, counters, env_a))
    update_step(original, seq)  # draws imagination noise from the RNG state saved above
    expected = agent_state(original)

    env_b, resumed = _toy_agent(smoke_cfg, seed=1)
    state = load_checkpoint(tmp_path / "last.pt", required=TRAINING_KEYS)
    replay = make_replay_buffer(64, 2, 5, "cpu")
    point = resume_training(state, resumed, env_b, replay, num_envs=4)
    assert (point.updates, point.frames, point.owed_updates, point.replay_steps) == (1, 64, 0.25, 0)
    update_step(resumed, seq)
    got = agent_state(resumed)
    assert any("target_value_model_params" in k for k in got), "slow critic not checkpointed"
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_compiled_agent_loads_an_eager_checkpoint(smoke_cfg):
    _, eager = _toy_agent(smoke_cfg, seed=0)
    smoke_cfg.compile.enabled = True
    smoke_cfg.compile.backend = "aot_eager"
    _, compiled = _toy_agent(smoke_cfg, seed=1)
    assert any("_orig_mod." in k for k in compiled.loss.state_dict())
    load_agent_state(compiled, {"loss": agent_state(eager)}, optimizer=False)
    for key, value in agent_state(eager).items():
        assert torch.equal(agent_state(compiled)[key], value), key


def test_checkpoint_of_another_model_size_is_refused(smoke_cfg):
    _, small = _toy_agent(smoke_cfg, seed=0)
    smoke_cfg.model.deter = 128
    _, large = _toy_agent(smoke_cfg, seed=0)
    with pytest.raises(CheckpointError, match="do not fit this agent.*model settings"):
        load_agent_state(large, {"loss": agent_state(small)}, optimizer=False)


def test_rng_state_covers_torch_numpy_python_and_the_env_generator():
    from dreamer.env.mujoco_env import MujocoBatchedEnv

    env = MujocoBatchedEnv("Isaac-Cartpole-v0", num_envs=3, seed=0)

    def draws():
        return (
            torch.rand(3),
            np.random.rand(3),
            random.random(),
            env.reset()["policy"].clone(),
        )

    state = rng_state(env)
    assert "env" in state
    first = draws()
    second = draws()
    assert not torch.equal(first[3], second[3]), "resets must depend on the env's generator"
    set_rng_state(state, env)
    again = draws()
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]
    assert torch.equal(first[3], again[3])


def test_truncated_or_foreign_files_are_refused_with_the_fix(tmp_path):
    good = save_checkpoint(tmp_path / "last.pt", {"updates": 3, "weights": torch.randn(1000)})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt is not a complete checkpoint.*earlier"):
        load_checkpoint(cut)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(noise)
    with pytest.raises(CheckpointError, match="missing loss, optimizer, frames, config"):
        load_checkpoint(good, required=TRAINING_KEYS)


STALLED_WRITER = """
import pathlib, sys, time
import torch
from dreamer.training.checkpoint import save_checkpoint

class Stall:
    def __reduce__(self):
        pathlib.Path(sys.argv[2]).write_text("writing")
        time.sleep(120)
        return (int, ())

save_checkpoint(sys.argv[1], {"updates": 2, "weights": torch.randn(100_000), "stall": Stall()})
"""


@pytest.mark.slow
def test_sigkill_mid_write_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(target, {"updates": 1, "weights": torch.ones(10)})
    flag = tmp_path / "writing"
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITER, str(target), str(flag)],
        cwd=ROOT,
        env=subprocess_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.poll() is None, "writer exited before it started writing"
            assert time.monotonic() < deadline, "writer never started writing"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert load_checkpoint(target)["updates"] == 1
    partial = [p for p in target.parent.iterdir() if p.name != "last.pt"]
    assert len(partial) == 1 and partial[0].name.endswith(".tmp"), partial
    with pytest.raises(CheckpointError):
        load_checkpoint(partial[0])
    save_checkpoint(target, {"updates": 3})
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def _collected(num_envs: int, steps: int, first_id: int) -> TensorDict:
    """A collector-shaped ``[N, T]`` batch whose ``policy`` entry numbers every step."""
    ids = first_id + torch.arange(num_envs * steps, dtype=torch.float32)
    flag = torch.zeros(num_envs, steps, 1, dtype=torch.bool)
    done = flag.clone()
    done[:, 4] = True
    return TensorDict(
        {
            "policy": ids.reshape(num_envs, steps, 1),
            "action": torch.randn(num_envs, steps, 2),
            "is_init": flag.clone(),
            "next": {
                "policy": torch.randn(num_envs, steps, 1),
                "reward": torch.randn(num_envs, steps, 1),
                "done": done,
                "terminated": done.clone(),
                "truncated": flag.clone(),
            },
        },
        [num_envs, steps],
    )


def test_replay_contents_round_trip_and_the_crash_point_ends_every_trajectory():
    replay = make_replay_buffer(8 * 20, 2, 4, "cpu")
    replay.extend(_collected(8, 12, 0))
    last = _collected(8, 12, 1000)
    replay.extend(last)  # 24 steps into 20 slots: the buffer has wrapped
    buffer = io.BytesIO()
    torch.save(replay_state(replay), buffer)
    buffer.seek(0)

    restored = make_replay_buffer(8 * 20, 2, 4, "cpu")
    assert load_replay_state(restored, torch.load(buffer, weights_only=False), 8) == len(replay)
    before, after = replay.storage[:], restored.storage[:]
    for key in ("policy", "action", ("next", "reward"), ("next", "terminated")):
        assert torch.equal(before[key], after[key]), key
    newest = torch.isin(after["policy"].squeeze(-1), last["policy"][:, -1].flatten())
    assert int(newest.sum()) == 8
    for key in (("next", "done"), ("next", "truncated")):
        assert bool(after[key].squeeze(-1)[newest].all()), key
        assert torch.equal(after[key].squeeze(-1)[~newest], before[key].squeeze(-1)[~newest])
    torch.manual_seed(0)
    assert restored.sample().shape[0] > 0


def test_replay_of_another_shape_is_refused():
    replay = make_replay_buffer(8 * 20, 2, 4, "cpu")
    replay.extend(_collected(8, 12, 0))
    state = replay_state(replay)
    with pytest.raises(CheckpointError, match=r"env.num_envs=4.*checkpoint.replay=false"):
        load_replay_state(make_replay_buffer(8 * 20, 2, 4, "cpu"), state, 4)
