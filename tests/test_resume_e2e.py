"""Real training processes stopped by signals: SIGINT/SIGTERM save and exit, SIGKILL resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]

# Two updates per 64-frame batch (train_ratio 0.5 / (2 x 8) per frame), a checkpoint after each
# batch's updates, train metrics once per batch.
FAST = [
    "task=Isaac-Cartpole-v0",
    "profile=smoke",
    "env.num_envs=8",
    "collector.frames_per_batch=64",
    "collector.init_random_frames=64",
    "batch_size=2",
    "batch_length=8",
    "imagination_horizon=3",
    "train_ratio=0.5",
    "replay.capacity=4096",
    "checkpoint.every_updates=2",
    "log.every_updates=2",
    "log.image_every_updates=1000000",
    "log.progress_bar=false",
]
UPDATES_PER_BATCH = 2


def _start(*overrides: str) -> subprocess.Popen:
    # One intra-op thread: on a busy 2-core machine more threads make each update ~10x slower.
    env = subprocess_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "train_dreamer.py"), *FAST, *overrides]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_checkpoint(
    proc: subprocess.Popen, path: Path, min_updates: int = 1, timeout: float = 120
) -> dict:
    """Poll until ``path`` holds a checkpoint of at least ``min_updates`` updates."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            state = torch.load(path, weights_only=False)  # atomic writes: always complete
            if state["updates"] >= min_updates:
                return state
        if proc.poll() is not None:
            pytest.fail(f"training exited early:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint of {min_updates} updates appeared")
        time.sleep(0.2)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return output


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_saves_a_final_checkpoint_and_exits_cleanly(tmp_path, signum):
    last = tmp_path / "checkpoints" / "last.pt"
    proc = _start(f"logdir={tmp_path}", "collector.total_frames=100000", "checkpoint.replay=true")
    seen = _wait_for_checkpoint(proc, last)
    proc.send_signal(signum)
    output = _finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert f"stopped by {signum.name}" in output
    final = torch.load(last, weights_only=False)
    assert final["updates"] >= seen["updates"] > 0
    assert final["frames"] >= seen["frames"]
    assert final["replay"]["_storage"]["_len"] == final["frames"]  # capacity not reached


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_counters_and_continues_its_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last = tmp_path / "checkpoints" / "last.pt"
    proc = _start(f"logdir={tmp_path}", "collector.total_frames=100000", "checkpoint.replay=true")
    # A second checkpoint: the first batch's curves are then on disk before the kill.
    _wait_for_checkpoint(proc, last, min_updates=2 * UPDATES_PER_BATCH)
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(last, weights_only=False)
    updates, frames = saved["updates"], saved["frames"]

    more = 2 * 64
    # What a crashed run may have flushed after its last checkpoint; the resumed run redoes it.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tensorboard")) as crashed:
        for step in (frames + 64, frames + more):
            crashed.add_scalar("perf/updates", -1.0, step)
    resumed = _start(
        f"logdir={tmp_path}",
        f"resume={last}",
        f"collector.total_frames={frames + more}",
        "checkpoint.replay=true",
    )
    output = _finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    assert f"updates={updates}, frames={frames}, owed_updates=0.0, replay_steps={frames}" in output
    final = torch.load(last, weights_only=False)
    assert final["frames"] == frames + more
    assert final["updates"] == updates + 2 * UPDATES_PER_BATCH
    assert final["replay"]["_storage"]["_len"] == frames + more  # the saved steps were kept

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    for tag in ("train/loss_model_reco", "perf/updates"):
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), f"{tag} has repeated steps: {steps}"
        assert min(steps) <= frames < max(steps) == frames + more, (tag, steps, frames)
    after = [e.value for e in acc.Scalars("perf/updates") if e.step > frames]
    assert len(after) == 2 and min(after) > updates, (after, updates)


def test_signals_become_a_stop_request_and_a_second_ctrl_c_interrupts():
    from dreamer.training.signals import StopOnSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler runs in the main thread between bytecodes
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert {s: signal.getsignal(s) for s in before} == before
