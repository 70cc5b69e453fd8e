"""Asynchronous collection: batches cross threads whole, once, and the acting copy never tears.

The stress test runs on every device present (CPU here and in CI; CUDA on a GPU machine, where
the race TorchRL hit lives): a background thread produces thousands of batches while the training
thread interleaves ``extend`` and ``sample`` on a ``[envs, time]`` storage on that device.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from fake_collection import assert_from_whole_batches
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from test_graphed_update import _agent, _sequences
from torch import nn
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from dreamer.collector.background import BackgroundCollector, LockedPolicy, StagedWeights

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class FakeCollector:
    """Yields ``count`` batches ``[envs, steps]``; batch ``i`` holds ``i`` everywhere, two ways."""

    def __init__(self, count: int, envs: int, steps: int, device: str):
        self.count, self.envs, self.steps, self.device = count, envs, steps, device

    def __iter__(self):
        for i in range(self.count):
            value = torch.full((self.envs, self.steps, 16), float(i), device=self.device)
            yield TensorDict(
                {"obs": value, "twice": value * 2, "id": torch.full((self.envs, self.steps), i)},
                [self.envs, self.steps],
                device=self.device,
            )

    def shutdown(self):
        pass


def _policy() -> TensorDictModule:
    return TensorDictModule(nn.Linear(3, 2), in_keys=["x"], out_keys=["y"])


@pytest.mark.parametrize("device", DEVICES)
def test_thousands_of_interleaved_extends_and_samples_stay_whole(device):
    envs, steps, count, slots = 4, 8, 3000, 6
    source = BackgroundCollector(
        lambda policy: FakeCollector(count, envs, steps, device), _policy(), device
    )
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(envs * steps * slots, device=device, ndim=2),
        sampler=RandomSampler(),
        batch_size=64,
    )
    extended = []
    for batch in source:
        buffer.extend(batch)
        extended.append(int(batch["id"][0, 0]))
        for _ in range(1 + len(extended) % 2):
            assert_from_whole_batches(buffer.sample(), extended[-1])
    source.shutdown()
    assert extended == list(range(count)), "a batch was lost, duplicated or reordered"
    stored = buffer.storage.get(slice(None))["id"].unique().tolist()
    assert sorted(stored) == list(range(count - slots, count))


def test_weights_are_copied_only_between_acting_steps():
    learner = _policy()
    source = BackgroundCollector(lambda policy: FakeCollector(1, 1, 1, "cpu"), learner, "cpu")
    acting = source.acting
    seen_lock_held = []

    class Probe(nn.Module):
        def forward(self, x):
            seen_lock_held.append(source.lock.locked())
            return acting.module(x)

    locked = LockedPolicy(TensorDictModule(Probe(), in_keys=["x"], out_keys=["y"]), source.lock)
    locked(TensorDict({"x": torch.randn(5, 3)}, [5]))
    assert seen_lock_held == [True]

    with torch.no_grad():
        learner.module.weight.add_(1.0)
    assert not torch.equal(acting.module.weight, learner.module.weight)
    source.lock.acquire()
    syncing = threading.Thread(target=source.update_policy_weights_)
    syncing.start()
    syncing.join(timeout=0.3)
    assert syncing.is_alive(), "weights were copied while the acting policy held the lock"
    source.lock.release()
    syncing.join(timeout=5)
    assert torch.equal(acting.module.weight, learner.module.weight)
    assert not acting.module.weight.requires_grad
    source.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="streams need a GPU")
def test_staged_weights_are_adopted_once_copied_without_waiting_for_the_learner():
    """The acting stream keeps its weights while the learner's stream is still busy, then takes
    the newest published version whole."""
    acting = {"w": torch.zeros(1000, device="cuda")}
    staged = StagedWeights(acting)
    acting_stream = torch.cuda.Stream(priority=-1)
    torch.cuda.synchronize()
    torch.cuda._sleep(int(5e8))  # the update in flight on the training stream
    started = time.perf_counter()
    staged.publish({"w": torch.full((1000,), 1.0, device="cuda")})
    staged.publish({"w": torch.full((1000,), 2.0, device="cuda")})
    with torch.cuda.stream(acting_stream):
        staged.adopt()  # the copies are still queued: nothing to adopt yet
    assert time.perf_counter() - started < 0.1, "publishing or adopting waited for the learner"
    assert not torch.cuda.current_stream().query(), "the learner's work should still be running"
    acting_stream.synchronize()
    assert bool((acting["w"] == 0).all()) and staged.adopted == 0
    torch.cuda.synchronize()
    with torch.cuda.stream(acting_stream):
        staged.adopt()
    acting_stream.synchronize()
    assert bool((acting["w"] == 2.0).all()) and staged.adopted == 2


def test_collector_errors_reach_the_training_thread():
    class Broken(FakeCollector):
        def __iter__(self):
            yield from super().__iter__()
            raise ValueError("env exploded")

    source = BackgroundCollector(lambda policy: Broken(2, 1, 1, "cpu"), _policy(), "cpu")
    with pytest.raises(RuntimeError, match="background collector failed"):
        for _ in source:
            pass


@pytest.mark.slow
def test_async_training_runs_and_syncs_weights(tmp_path):
    from conftest import load_config

    from dreamer.training.loop import train

    cfg = load_config(
        "profile=smoke",
        "task=Isaac-Cartpole-v0",
        f"logdir={tmp_path}",
        "pipeline.mode=async",
        "pipeline.weight_sync_every=2",
        "log.progress_bar=false",
    )
    result = train(cfg)
    assert result["updates"] > 0
    assert result["frames"] >= int(cfg.collector.total_frames)
    assert result["weight_syncs"] == result["updates"] // 2


def test_the_collector_keeps_exploring_while_the_learner_is_inside_a_loss(smoke_cfg):
    """The interaction type is one variable per process. The collection thread sets RANDOM for
    its batch; the training thread then enters a loss, which sets its own mode for the call. The
    collector's actions in that window must still be random, and once both threads have left,
    the variable must not be left at DETERMINISTIC."""
    from tensordict.nn import InteractionType, set_interaction_type
    from tensordict.nn.probabilistic import interaction_type

    agent = _agent(smoke_cfg, 3)
    sample = _sequences(2, 6, obs_dim=4, action_dim=2)
    inside, acted = threading.Event(), threading.Event()

    def pause_inside_the_loss(module, args):
        if threading.current_thread() is not threading.main_thread() and not inside.is_set():
            inside.set()
            assert acted.wait(30)

    hook = agent.encoder.register_forward_pre_hook(pause_inside_the_loss)
    learner = threading.Thread(target=lambda: agent.loss(sample))
    with set_interaction_type(None):  # a clean start, whatever earlier tests left
        with set_interaction_type(InteractionType.RANDOM):  # the collector's batch
            learner.start()
            assert inside.wait(60), "the loss never ran the encoder"
            seen_while_learning = interaction_type()
            acted.set()
            learner.join(60)
        left = interaction_type()
    hook.remove()
    assert seen_while_learning is InteractionType.RANDOM
    assert left in (None, InteractionType.RANDOM)


def test_the_losses_compute_the_same_whether_they_sample_at_random_or_deterministically(
    smoke_cfg,
):
    """Setting the losses' mode to RANDOM for the collector's sake changes no loss term."""
    from torchrl.envs.utils import ExplorationType

    agent = _agent(smoke_cfg, 4)
    sample = _sequences(3, 8, obs_dim=4, action_dim=2)
    torch.manual_seed(1)
    random_mode = agent.loss(sample.clone())
    modes = [m for m in agent.loss.modules() if hasattr(m, "deterministic_sampling_mode")]
    assert len(modes) == 4 and all(m.deterministic_sampling_mode == "random" for m in modes)
    for module in modes:
        module.deterministic_sampling_mode = ExplorationType.DETERMINISTIC
    torch.manual_seed(1)
    deterministic_mode = agent.loss(sample.clone())
    for key in random_mode.keys(True, True):
        assert torch.equal(random_mode[key], deterministic_mode[key]), key


def test_learner_clock_reports_busy_share_and_rates():
    import time

    from dreamer.training.learner_clock import LearnerClock

    clock = LearnerClock("cpu")
    for _ in range(3):
        clock.start()
        time.sleep(0.02)
        clock.stop()
        time.sleep(0.02)
    summary = clock.summary(frames_since_first_update=600)
    assert 0.3 < summary["learner_busy"] < 0.7
    assert summary["updates_per_s"] == pytest.approx(3 / summary["wall_s"])
    assert summary["env_steps_per_s"] == pytest.approx(600 / summary["wall_s"])


def test_learner_clock_balanced_window_leaves_out_the_prefill_batchs_backlog(monkeypatch):
    """Each batch owes 2 one-second updates and arrives 3 s after the one before: 2/3 busy.
    From the first update on, the learner first works off the prefill batch's updates, which
    the plain figures count against the later batches' frames."""
    from dreamer.training import learner_clock

    now = [0.0]
    monkeypatch.setattr(learner_clock.time, "perf_counter", lambda: now[0])
    clock = learner_clock.LearnerClock("cpu")
    clock.batch_arrived(100)  # the prefill batch, before any update: not a mark
    for batch in range(1, 5):
        if batch > 1:
            now[0] = 3.0 * (batch - 1) - 1.0  # one idle second waiting for the batch
            clock.batch_arrived(100 * batch)
        for _ in range(2):
            clock.start()
            now[0] += 1.0
            clock.stop()
    summary = clock.summary(frames_since_first_update=300)
    assert summary["learner_busy"] == pytest.approx(8 / 10)  # the backlog inflates it
    assert summary["env_steps_per_s"] == pytest.approx(300 / 10)
    assert summary["balanced_wall_s"] == pytest.approx(6.0)  # arrivals at 2 s and 8 s
    assert summary["balanced_learner_busy"] == pytest.approx(2 / 3)
    assert summary["balanced_env_steps_per_s"] == pytest.approx(200 / 6)
    assert summary["balanced_updates_per_s"] == pytest.approx(4 / 6)


def test_learner_clock_shares_the_training_threads_time_from_the_first_update():
    import time

    from dreamer.training.learner_clock import LearnerClock

    def slow_batches(count: int):
        for index in range(count):
            time.sleep(0.02)
            yield index

    clock = LearnerClock("cpu")
    with clock.host_phase("waiting_for_batch"):  # the random prefill: not counted
        time.sleep(0.05)
    clock.start()
    clock.stop()
    got = []
    for batch in clock.timed(slow_batches(3), "waiting_for_batch"):
        with clock.host_phase("replay_extend"):
            time.sleep(0.01)
        got.append(batch)
    assert got == [0, 1, 2]
    assert 0.055 < clock.host_s["waiting_for_batch"] < 0.1
    assert 0.025 < clock.host_s["replay_extend"] < 0.06
    summary = clock.summary(frames_since_first_update=0)
    wall = summary["wall_s"]
    assert summary["host_waiting_for_batch"] == pytest.approx(
        clock.host_s["waiting_for_batch"] / wall, rel=0.05
    )
    assert summary["host_waiting_for_batch"] + summary["host_replay_extend"] <= 1.0
