"""The run stops on its wall-clock budget, and rewards reach the replay scaled as configured."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import load_config
from tensordict import TensorDict

import dreamer.training.loop as loop
from dreamer.replay.buffer import STORED_KEYS, select_for_storage
from dreamer.training.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from export_scalars import read_scalars  # noqa: E402


def cartpole_smoke(logdir: Path, *overrides: str):
    """The smoke profile on Cartpole, logging to ``logdir``, with ``overrides``."""
    return load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        f"logdir={logdir}",
        "log.progress_bar=false",
        *overrides,
    )


def test_select_for_storage_scales_only_the_stored_reward():
    batch = TensorDict({key: torch.full((2, 3, 1), 0.5) for key in STORED_KEYS}, [2, 3])
    stored = select_for_storage(batch, (), reward_scale=60.0)
    assert torch.equal(stored.get(("next", "reward")), torch.full((2, 3, 1), 30.0))
    assert torch.equal(batch.get(("next", "reward")), torch.full((2, 3, 1), 0.5))
    assert torch.equal(stored.get("policy"), batch.get("policy"))


def test_time_limit_stops_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    scales = []

    def recording_select(batch, obs_keys=(), reward_scale=1.0):
        scales.append(reward_scale)
        return select_for_storage(batch, obs_keys, reward_scale)

    monkeypatch.setattr(loop, "select_for_storage", recording_select)
    cfg = cartpole_smoke(
        tmp_path, "collector.total_frames=100000000", "time_limit_s=4", "reward_scale=7.5"
    )
    result = train(cfg)
    assert result["stopped_by"] == "time_limit_s"
    assert 0 < result["frames"] < 1_000_000
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert scales and set(scales) == {7.5}
    elapsed = read_scalars(tmp_path / "tensorboard", ["time/elapsed_s"])["time/elapsed_s"]
    assert [step for step, _ in elapsed] == sorted(step for step, _ in elapsed)
    assert 0 < elapsed[-1][1] < 60  # seconds of training, not a timestamp


def test_time_limit_cuts_a_long_update_loop_short(tmp_path):
    # 256 frames x train_ratio 512 / (4 x 16) = 2,048 updates owed by one collection: minutes on
    # this CPU, so the limit must be checked between updates, not only between collections.
    cfg = cartpole_smoke(
        tmp_path, "collector.init_random_frames=256", "train_ratio=512", "time_limit_s=3"
    )
    result = train(cfg)
    assert result["stopped_by"] == "time_limit_s"
    assert 0 < result["updates"] < 2048
    assert result["frames"] == 256
