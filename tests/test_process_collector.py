"""Collection in a worker process (``pipeline.mode=process``): batches cross whole, once, in
order; weights cross whole; worker failures surface; shutdown never hangs; training runs.

The stress test runs on every device present (CPU here; CUDA on a GPU machine, where batches
cross by CUDA IPC and the replay lives on the GPU).
"""

from __future__ import annotations

import time
from functools import partial

import pytest
import torch
from fake_collection import assert_from_whole_batches, fake_env, fake_worker, probe_policy

from dreamer.collector.process import ProcessCollector
from dreamer.replay.buffer import make_replay_buffer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KEYS = ["obs", "twice", "id", "t", "draw", ("next", "done"), ("next", "truncated")]


@pytest.mark.parametrize("device", DEVICES)
def test_thousands_of_interleaved_extends_and_samples_stay_whole(device):
    envs, steps, count, slots = 4, 8, 2000, 6
    mirror = fake_env()
    source = ProcessCollector(
        partial(fake_worker, count, envs, steps), probe_policy(), "cpu", 2, KEYS, mirror
    )
    replay = make_replay_buffer(envs * steps * slots, batch_size=8, batch_length=4, device=device)
    extended = []
    expected_draw = int(fake_env_copy(mirror)._rng.integers(2**30))
    try:
        for batch in source:
            assert "unsent" not in batch.keys(), "keys outside `keys` crossed the process"
            # the training process's env follows the worker env's generator batch by batch
            assert int(batch["draw"][0, 0]) == expected_draw
            expected_draw = int(fake_env_copy(mirror)._rng.integers(2**30))
            replay.extend(batch.to(device))
            extended.append(int(batch["id"][0, 0]))
            for _ in range(1 + len(extended) % 2):
                sample = replay.sample()
                assert_from_whole_batches(sample, extended[-1])
                assert torch.equal(sample["t"] // steps, sample["id"])
    finally:
        source.shutdown()
    assert extended == list(range(count)), "a batch was lost, duplicated or reordered"
    stored = replay.storage.get(slice(None))["id"].unique().tolist()
    assert sorted(stored) == list(range(count - slots, count))
    assert not source.process.is_alive()


def fake_env_copy(env):
    """A copy of ``env``'s generator (drawing from it must not advance the mirror)."""
    copy = fake_env()
    copy._rng.bit_generator.state = env._rng.bit_generator.state
    return copy


def test_a_resumed_worker_continues_the_saved_env_generator():
    mirror = fake_env()
    mirror._rng.integers(2**30, size=5)  # a resumed run's restored generator: further along
    expected = int(fake_env_copy(mirror)._rng.integers(2**30))
    source = ProcessCollector(partial(fake_worker, 1, 1, 1), probe_policy(), "cpu", 1, KEYS, mirror)
    try:
        (batch,) = list(source)
    finally:
        source.shutdown()
    assert int(batch["draw"][0, 0]) == expected


def test_the_worker_acts_with_each_new_version_whole():
    learner = probe_policy()
    count, ahead, burst = 60, 2, 5
    source = ProcessCollector(
        partial(fake_worker, count, 2, 4, act=True), learner, "cpu", ahead, [*KEYS, "seen"]
    )
    firsts = []  # the version each batch's first step acted with
    try:
        for i, batch in enumerate(source):
            seen = batch["seen"]  # [envs, steps, (a.min, a.max, b.min, b.max)]
            assert (seen == seen[..., :1]).all(), f"batch {i} acted with torn or mixed weights"
            values = seen[0, :, 0].tolist()
            assert values == sorted(values) and set(values) <= set(range(burst * i + 1))
            firsts.append(values[0])
            # several versions back to back: writes go on while the worker copies one in
            for version in range(burst * i + 1, burst * (i + 1) + 1):
                with torch.no_grad():
                    learner.module.a.fill_(version)
                    learner.module.b.fill_(version)
                source.update_policy_weights_()
    finally:
        source.shutdown()
    assert source.weight_syncs == burst * count
    # a batch begun after a sync acts with it; the queued batches (max_batches_ahead), the one
    # being produced and the one waiting for a slot may lag behind
    lag = ahead + 2
    for i in range(lag, count):
        assert firsts[i] >= burst * (i - lag + 1), (i, firsts[i])


@pytest.mark.parametrize(
    "how, match",
    [("raise", "ValueError: env exploded"), ("exit", "exit code 3")],
    ids=["exception", "crash"],
)
def test_worker_failures_reach_the_training_process(how, match):
    source = ProcessCollector(
        partial(fake_worker, 5, 1, 1, fail_after=2, how=how), probe_policy(), "cpu", 1, KEYS
    )
    got = []
    with pytest.raises(RuntimeError, match=match) as error:
        for batch in source:
            got.append(int(batch["id"][0, 0]))
    source.shutdown()
    # an exception comes after the batches sent before it; a crash may also take with it the
    # shared memory of batches not yet received
    assert got == [0, 1] if how == "raise" else got in ([], [0], [0, 1])
    if how == "raise":  # the worker's traceback is in the message
        assert "fake_collection.py" in str(error.value)


def test_shutdown_does_not_hang_on_a_stuck_worker():
    source = ProcessCollector(
        partial(fake_worker, 5, 1, 1, fail_after=1, how="hang"),
        probe_policy(),
        "cpu",
        1,
        KEYS,
        shutdown_timeout_s=1.0,
    )
    next(iter(source))
    began = time.monotonic()
    source.shutdown()
    assert time.monotonic() - began < 10
    assert not source.process.is_alive()


ORPHAN = """
import os, signal
from functools import partial
from fake_collection import fake_worker, probe_policy
from dreamer.collector.process import ProcessCollector

if __name__ == "__main__":
    source = ProcessCollector(partial(fake_worker, 100, 1, 1), probe_policy(), "cpu", 1, ["id"])
    next(iter(source))
    print(source.process.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_worker_ends_with_a_killed_training_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    tests = Path(__file__).parent
    # Keep the caller's path too: packages may come from PYTHONPATH (as on the GPU machine).
    path = os.pathsep.join(
        p for p in (str(tests.parent), str(tests), os.environ.get("PYTHONPATH")) if p
    )
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=60)
    assert done.returncode == -9, done.stderr[-2000:]
    stat = Path(f"/proc/{int(done.stdout.split()[0])}/stat")

    def running() -> bool:  # a zombie waiting for init to reap it has ended
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(), "the worker outlived the training process"


def test_a_collector_left_without_shutdown_still_stops_its_worker():
    import gc

    source = ProcessCollector(partial(fake_worker, 100, 1, 1), probe_policy(), "cpu", 1, ["id"])
    batches = iter(source)
    next(batches)
    process = source.process
    # What also runs at interpreter exit: multiprocessing's own exit handler would SIGTERM the
    # worker (which ignores it) and wait for it forever.
    del source, batches
    gc.collect()
    assert not process.is_alive()


def test_process_mode_trains_checkpoints_and_resumes_without_stepping_its_own_env(
    tmp_path, monkeypatch
):
    from conftest import load_config

    from dreamer.env.mujoco_env import MujocoBatchedEnv
    from dreamer.training.loop import make_training_env, train

    def stepped(*args, **kwargs):
        raise AssertionError("the training process stepped its spec-only env")

    # Patched in this process only: the worker imports the real env.
    monkeypatch.setattr(MujocoBatchedEnv, "_step", stepped)
    overrides = [
        "profile=smoke",
        "task=Isaac-Cartpole-v0",
        f"logdir={tmp_path}",
        "pipeline.mode=process",
        "pipeline.weight_sync_every=2",
        "train_ratio=1",
        "log.progress_bar=false",
    ]
    cfg = load_config(*overrides)
    result = train(cfg)
    assert result["updates"] > 0
    assert result["frames"] >= int(cfg.collector.total_frames)
    assert result["weight_syncs"] == result["updates"] // 2
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert saved["updates"] == result["updates"]
    fresh = make_training_env(cfg).base_env._rng.bit_generator.state
    assert saved["rng"]["env"] != fresh, "the checkpoint holds the unused spec env's generator"

    more = int(cfg.collector.total_frames) + int(cfg.collector.frames_per_batch)
    resumed = train(
        load_config(
            *overrides,
            f"resume={tmp_path}/checkpoints/last.pt",
            f"collector.total_frames={more}",
        )
    )
    assert resumed["frames"] == more
    assert resumed["updates"] > result["updates"]
