"""The non-finite guard: no host sync per update, names the first bad term and update."""

from __future__ import annotations

import pytest
import torch
from conftest import load_config
from tensordict import TensorDict

from dreamer.training.guard import NonFiniteGuard
from dreamer.training.update import NonFiniteLossError, check_finite

NAN, INF = float("nan"), float("inf")


def _metrics(model=1.0, actor=1.0, grad=1.0, device="cpu") -> TensorDict:
    values = {
        "loss_model_reco": torch.tensor([0.5, model]),
        "loss_actor": torch.tensor(actor),
        "grad_norm": torch.tensor(grad),
        "entropy": torch.tensor(NAN),  # a diagnostic, not a loss term: never checked
    }
    return TensorDict({k: v.to(device) for k, v in values.items()}, [])


def test_observe_never_reads_the_device():
    # Meta tensors have no data: any host read (.item(), bool(), nonzero) raises.
    guard = NonFiniteGuard()
    for update in range(1, 4):
        guard.observe(_metrics(device="meta"), update)
    with pytest.raises(RuntimeError, match="meta"):
        guard.check()


def test_reports_the_first_bad_update_and_its_first_bad_term():
    guard = NonFiniteGuard()
    guard.observe(_metrics(), 1)
    guard.check()
    guard.observe(_metrics(), 2)
    guard.observe(_metrics(actor=NAN), 3)
    guard.observe(_metrics(model=INF, actor=NAN, grad=NAN), 4)
    with pytest.raises(NonFiniteLossError, match=r"^loss_actor is nan at update 3\. .*last good"):
        guard.check()


def test_values_later_in_a_term_and_the_gradient_norm_are_checked():
    guard = NonFiniteGuard()
    guard.observe(_metrics(model=-INF), 5)
    with pytest.raises(NonFiniteLossError, match="loss_model_reco is -inf at update 5"):
        guard.check()
    guard = NonFiniteGuard()
    guard.observe(_metrics(grad=INF), 6)
    with pytest.raises(NonFiniteLossError, match="grad_norm is inf at update 6"):
        guard.check()
    with pytest.raises(NonFiniteLossError, match="grad_norm is inf at update 9"):
        check_finite(_metrics(grad=INF), 9)
    check_finite(_metrics(), 9)


@pytest.mark.slow
def test_poisoned_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import dreamer.training.loop as loop

    calls = {"n": 0}
    real = loop.sample_sequences

    def nan_from_the_third_sample(*args):
        calls["n"] += 1
        sequences = real(*args)
        if calls["n"] >= 3:  # a NaN observation reaches the learner in update 3
            sequences.get("policy")[0, 1] = NAN
        return sequences

    monkeypatch.setattr(loop, "sample_sequences", nan_from_the_third_sample)
    cfg = load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        f"logdir={tmp_path}",
        "env.num_envs=8",
        "collector.frames_per_batch=64",
        "collector.init_random_frames=64",
        "collector.total_frames=512",
        "batch_size=2",
        "batch_length=8",
        "imagination_horizon=3",
        "train_ratio=0.5",
        "checkpoint.every_updates=2",
        "log.every_updates=100",
        "log.progress_bar=false",
    )
    # (On this model a NaN observation leaves the losses finite and shows only in the gradient.)
    with pytest.raises(NonFiniteLossError, match=r"(loss_\w+|grad_norm) is nan at update 3\."):
        loop.train(cfg)
    kept = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert kept["updates"] == 2
    assert all(torch.isfinite(v).all() for v in kept["loss"].values() if v.is_floating_point())
