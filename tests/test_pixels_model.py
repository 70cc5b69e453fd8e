"""The pixel world model: per-key reconstruction terms, acting from frames, config checks, strip."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from conftest import load_config

from dreamer.agent import build_agent
from dreamer.imagination.plots import frame_strip, frame_strip_figure, strip_steps
from dreamer.imagination.rollouts import open_loop_prediction
from dreamer.replay.buffer import select_for_storage
from dreamer.training.config_check import ConfigError, validate_config
from dreamer.training.loop import make_training_env
from dreamer.world_model.networks import symlog

matplotlib.use("Agg")

PIXELS = ("env.pixels=true", "env.camera.height=32", "env.camera.width=32")


def _cfg(*overrides: str):
    cfg = load_config("task=Isaac-Cartpole-v0", "profile=smoke", "env.num_envs=2", *overrides)
    cfg.compile.enabled = False
    return cfg


@pytest.fixture(scope="module")
def pixel_agent():
    """An untrained [pixels, policy] agent on 2 Cartpole envs, and 12 real steps of each."""
    torch.manual_seed(0)
    cfg = _cfg(*PIXELS, "model.obs_keys=[pixels,policy]")
    env = make_training_env(cfg)
    agent = build_agent(cfg, env)
    with torch.no_grad():
        data = env.rollout(12, agent.policy, break_when_any_done=False)
    yield env, agent, data
    env.close()


def test_reconstruction_terms_of_each_key_are_summed(pixel_agent):
    _, agent, data = pixel_agent
    sequences = select_for_storage(data, agent.obs_keys)
    losses, out = agent.loss.model_loss(sequences.clone())
    images = out["next", "reco_pixels"]
    assert images.shape == data["next", "pixels"].shape  # channel-last, like the camera
    pixel_term = (data["next", "pixels"].float() / 255 - images).pow(2).sum((-3, -2, -1)).mean()
    target = symlog(data["next", "policy"])
    vector_term = (target - out["next", "reco_symlog_policy"]).pow(2).sum(-1).mean()
    torch.testing.assert_close(losses["loss_model_reco"].squeeze(), pixel_term + vector_term)


def test_acting_policy_reads_frames(pixel_agent):
    env, agent, data = pixel_agent
    assert agent.policy.module[0].in_keys == ["pixels", "policy"]
    td = env.reset()
    blank = td.clone()
    blank["pixels"] = torch.zeros_like(blank["pixels"])
    with torch.no_grad():
        seen = agent.policy(td)["state"]
        unseen = agent.policy(blank)["state"]
    assert not torch.equal(seen, unseen)  # the posterior depends on what the camera sees
    assert data["action"].abs().max() <= 1


def test_open_loop_prediction_and_frame_strip_on_a_pixel_model(pixel_agent):
    _, agent, data = pixel_agent
    prediction = open_loop_prediction(agent, data, context=4, horizon=8)
    assert prediction["imagined_pixels"].shape == (2, 8, 32, 32, 3)
    assert prediction["real_obs"].shape == (2, 8, 4)  # the vector head is decoded too
    steps, frames = frame_strip(prediction, sample=1, max_frames=4)
    assert steps == [0, 2, 5, 7]
    real = (data["next", "pixels"][1, 4 + np.array(steps)]).numpy()
    np.testing.assert_array_equal(frames[0], real)
    fig = frame_strip_figure(prediction, sample=1, max_frames=4)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    np.testing.assert_array_equal(np.stack(shown[4:]), frames[1])  # bottom row: imagined


def test_strip_steps_spread_over_the_horizon():
    assert strip_steps(1) == [0]
    assert strip_steps(5, 8) == [0, 1, 2, 3, 4]
    assert strip_steps(15, 4) == [0, 5, 9, 14]
    with pytest.raises(ValueError):
        strip_steps(0)


def test_frame_strip_needs_a_pixel_model():
    prediction = {"real_obs": torch.zeros(1, 3, 4), "real_reward": torch.zeros(1, 3, 1)}
    with pytest.raises(ValueError, match="obs_keys=\\[pixels\\]"):
        frame_strip(prediction)


def test_frames_are_stored_only_when_the_model_reads_them(pixel_agent):
    _, _, data = pixel_agent
    assert "pixels" not in select_for_storage(data).keys()
    stored = select_for_storage(data, ("pixels", "policy"))
    assert stored["next", "pixels"].dtype == torch.uint8 and "pixels" in stored.keys()


def test_vector_model_keeps_its_plain_modules():
    from torchrl.modules import DreamerV3MLP
    from toy_env import ToyBatchedEnv

    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model.networks import SymlogEncoder, model_size_from_config

    cfg = _cfg()
    env = add_acting_state(
        add_episode_stats(ToyBatchedEnv(2)), model_size_from_config(cfg.model), 2
    )
    agent = build_agent(cfg, env)
    assert agent.obs_keys == ("policy",)
    assert type(agent.encoder) is SymlogEncoder and type(agent.decoder) is DreamerV3MLP
    assert agent.encoder(torch.zeros(3, 4)).shape == (3, cfg.model.units)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.obs_keys=[pixels]",), "set env.pixels=true"),
        (("model.obs_keys=[depth]",), "model.obs_keys must be"),
        ((*PIXELS, "model.obs_keys=[pixels]", "env.camera.height=40"), "env.camera.height/width"),
        ((*PIXELS, "model.obs_keys=[pixels]", "replay.capacity=10000000000"), "replay.capacity="),
    ],
)
def test_bad_pixel_settings_are_rejected_before_building(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_cfg(*overrides))


def test_pixel_config_is_valid():
    validate_config(_cfg(*PIXELS, "model.obs_keys=[pixels]"))
