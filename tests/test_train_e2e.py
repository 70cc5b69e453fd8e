"""End-to-end runs of the main job on the embedded env, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _train(*overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "train_dreamer.py"), *overrides, "log.progress_bar=false"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_profile_trains_logs_checkpoints_and_resumes(tmp_path):
    logdir = tmp_path / "run"
    first = _train("task=Isaac-Ant-v0", "profile=smoke", f"logdir={logdir}")
    assert first.returncode == 0, first.stderr[-3000:]
    events = list((logdir / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "TensorBoard event file missing"
    ckpt = torch.load(logdir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["frames"] == 2048
    assert ckpt["updates"] > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss_model_reco",
        "train/loss_actor",
        "train/loss_value",
        "perf/env_steps_per_s",
        "perf/updates_per_s",
    ):
        assert tag in tags, f"{tag} not logged; have {sorted(tags)}"

    resumed = _train(
        "task=Isaac-Ant-v0",
        "profile=smoke",
        f"logdir={logdir}",
        f"resume={logdir}/checkpoints/last.pt",
        "collector.total_frames=3072",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = torch.load(logdir / "checkpoints" / "last.pt", weights_only=False)
    assert after["frames"] >= 3072
    assert after["updates"] > ckpt["updates"]


def test_cli_rejects_bad_input_before_building_anything(tmp_path):
    bad = _train("task=Isaac-Nope-v0", "profile=smoke", f"logdir={tmp_path}", timeout=120)
    assert bad.returncode != 0
    # task= picks configs/task/<id>.yaml, so Hydra names the tasks there before any work starts.
    assert "Available options in 'task'" in bad.stderr
    assert "Isaac-Ant-v0" in bad.stderr and "Isaac-Cartpole-v0" in bad.stderr
    missing = _train(
        "task=Isaac-Ant-v0",
        "profile=smoke",
        f"logdir={tmp_path}",
        f"resume={tmp_path}/none.pt",
        timeout=120,
    )
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr
