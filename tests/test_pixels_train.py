"""End to end on camera frames: train a tiny pixel world model, then run the notebook on it."""

from __future__ import annotations

import pytest
import torch
from conftest import execute_notebook, load_config


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    """``train(cfg)`` on 8 Cartpole envs, 32x32 frames, world model on ``pixels`` alone."""
    from dreamer.training.loop import train

    logdir = tmp_path_factory.mktemp("pixels") / "run"
    cfg = load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        f"logdir={logdir}",
        "env.pixels=true",
        "env.camera.height=32",
        "env.camera.width=32",
        "model.obs_keys=[pixels]",
        "env.num_envs=8",
        "collector.frames_per_batch=128",
        "collector.init_random_frames=128",
        "collector.total_frames=256",
        "batch_size=4",
        "batch_length=16",
        "train_ratio=4",
        "log.every_updates=4",
        "log.image_every_updates=8",
        "log.progress_bar=false",
    )
    cfg.compile.enabled = False
    torch.manual_seed(0)
    return logdir, train(cfg)


@pytest.mark.slow
def test_pixel_world_model_trains(pixel_run):
    logdir, result = pixel_run
    assert result["updates"] >= 12
    assert result["agent"].obs_keys == ("pixels",)
    metrics = result["metrics"]
    for key, value in metrics.items():
        if key.startswith("loss_"):
            assert torch.isfinite(value).all(), key
    history = result["world_model_loss"]
    # Reconstruction dominates an untrained pixel model's loss (~1000 at 32x32): it must fall.
    assert history[-4:].mean() < 0.95 * history[:4].mean(), history

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "tensorboard"))
    events.Reload()
    assert "imagination/frames" in events.Tags()["images"]


@pytest.mark.slow
def test_notebook_shows_frames_of_a_pixel_checkpoint(pixel_run, monkeypatch):
    logdir, _ = pixel_run
    monkeypatch.setenv("DREAMER_CHECKPOINT", str(logdir / "checkpoints" / "last.pt"))
    outputs = execute_notebook("imagination_rollouts.ipynb")
    text = "".join(o.get("text", "") for o in outputs)
    assert "open-loop pixel RMSE" in text and "mean imagined return per start state" in text
    figures = [o for o in outputs if o.get("output_type") == "display_data"]
    assert len(figures) >= 4  # open loop, frame strip, policy dream frames, returns
