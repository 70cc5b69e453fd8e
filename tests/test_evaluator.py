"""The evaluator: worker environment, never-blocking weight hand-off, eval curves in TensorBoard."""

from __future__ import annotations

import os
import stat
import sys
import time

import numpy as np
import pytest
import torch
from conftest import load_config

from dreamer.evaluation.settings import WORKER_ENV_KEYS


def _report(outbox) -> None:
    """Spawned target: what the process was exec'd with, and its XDG dir's mode."""
    from dreamer.evaluation.launch import exec_environment

    xdg = os.environ["XDG_RUNTIME_DIR"]
    outbox.put(
        {
            "exec": exec_environment(WORKER_ENV_KEYS),
            "mode": stat.S_IMODE(os.stat(xdg).st_mode),
            "torch_imported": "torch" in sys.modules,
        }
    )


def _eval_cfg(tmp_path, **overrides):
    cfg = load_config("profile=smoke", "eval.enabled=true")
    lib = tmp_path / "nvidia-libs"
    lib.mkdir(exist_ok=True)
    icd = tmp_path / "nvidia_icd.json"
    icd.write_text("{}")
    cfg.eval.cuda_visible_devices = "3"
    cfg.eval.nvidia_lib_dir = str(lib)
    cfg.eval.vulkan_icd = str(icd)
    cfg.eval.xdg_runtime_dir = str(tmp_path / "xdg" / "run")
    for key, value in overrides.items():
        cfg.eval[key] = value
    return cfg


def test_worker_is_started_with_its_environment(tmp_path, monkeypatch):
    from dreamer.evaluation.launch import start_process
    from dreamer.evaluation.settings import worker_environment

    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/old")
    monkeypatch.delenv("VK_ICD_FILENAMES", raising=False)
    cfg = _eval_cfg(tmp_path)
    env = worker_environment(cfg.eval)
    outbox = torch.multiprocessing.get_context("spawn").Queue()
    process = start_process(_report, (outbox,), env, name="report")
    report = outbox.get(timeout=60)
    process.join(timeout=30)

    # The values were in the environment the interpreter was exec'd with (/proc/self/environ),
    # i.e. before it imported anything and before the dynamic loader ran.
    assert report["exec"] == {
        "CUDA_VISIBLE_DEVICES": "3",
        "LD_LIBRARY_PATH": f"{tmp_path / 'nvidia-libs'}:/opt/old",
        "VK_ICD_FILENAMES": str(tmp_path / "nvidia_icd.json"),
        "__GLX_VENDOR_LIBRARY_NAME": "nvidia",
        "XDG_RUNTIME_DIR": str(tmp_path / "xdg" / "run"),
    }
    assert report["mode"] == 0o700
    # ... and this process got its own environment back.
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/old"
    assert "VK_ICD_FILENAMES" not in os.environ


def test_bad_eval_settings_are_rejected_with_the_fix(tmp_path):
    from dreamer.evaluation.settings import validate_eval_config
    from dreamer.training.config_check import ConfigError

    with pytest.raises(ConfigError, match="eval.nvidia_lib_dir"):
        validate_eval_config(_eval_cfg(tmp_path, nvidia_lib_dir=str(tmp_path / "missing")).eval)
    with pytest.raises(ConfigError, match="hides every GPU"):
        validate_eval_config(
            _eval_cfg(tmp_path, worker_device="cuda:0", cuda_visible_devices="").eval
        )
    with pytest.raises(ConfigError, match="eval.episodes"):
        validate_eval_config(_eval_cfg(tmp_path, episodes=0).eval)
    with pytest.raises(ConfigError, match="eval.video_max_frames"):
        validate_eval_config(_eval_cfg(tmp_path, video_max_frames=-1).eval)


def test_recorder_keeps_env_0_until_its_episode_ends_and_caps_the_length():
    from dreamer.evaluation.video import FrameRecorder

    def frames(value):  # 3 envs; env 0's frame is filled with value, the others with 255
        pixels = torch.full((3, 4, 5, 3), 255, dtype=torch.uint8)
        pixels[0] = value
        return pixels

    recorder = FrameRecorder(max_frames=10)
    for step, done in enumerate([False, False, True, False]):
        recorder.add(frames(step), done)
    video = recorder.video()
    assert video.shape == (3, 4, 5, 3) and video.dtype == np.uint8
    assert video[:, 0, 0, 0].tolist() == [0, 1, 2]  # env 0 only, nothing after its end
    capped = FrameRecorder(max_frames=2)
    for step in range(5):
        capped.add(frames(step), False)
    assert capped.video()[:, 0, 0, 0].tolist() == [0, 1]
    assert FrameRecorder(max_frames=0).video() is None


def test_existing_xdg_dir_is_tightened_to_0700(tmp_path):
    from dreamer.evaluation.launch import make_private_dir

    loose = tmp_path / "xdg"
    loose.mkdir(mode=0o777)
    loose.chmod(0o755)
    make_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_weights_hand_off_never_blocks_and_the_worker_takes_the_newest():
    from dreamer.evaluation.evaluator import offer
    from dreamer.evaluation.worker import newest

    inbox = torch.multiprocessing.get_context("spawn").Queue(maxsize=2)
    dropped = 0
    for i in range(6):  # nobody reads: a blocking put would hang on the third
        start = time.monotonic()
        dropped += offer(inbox, {"updates": i})
        assert time.monotonic() - start < 0.5
        time.sleep(0.05)  # the queue's feeder thread flushes between hand-offs
    assert dropped == 4
    message, stop = newest(inbox, inbox.get(timeout=5))
    assert message == {"updates": 5} and not stop
    inbox.put(None)
    time.sleep(0.2)
    assert newest(inbox, {"updates": 6}) == ({"updates": 6}, True)


@pytest.mark.slow
def _eval_train_cfg(tmp_path, *overrides: str):
    return load_config(
        "task=Isaac-Cartpole-v0",
        "profile=smoke",
        "collector.total_frames=768",
        "eval.enabled=true",
        "train_ratio=1",  # 8 updates: enough for two hand-offs, cheap on a shared CPU
        "eval.every_updates=4",
        "eval.episodes=2",
        "eval.max_steps=50",
        f"eval.xdg_runtime_dir={tmp_path / 'xdg'}",
        f"logdir={tmp_path / 'run'}",
        "log.progress_bar=false",
        *overrides,
    )


def test_training_with_eval_writes_eval_curves(tmp_path, caplog):
    from dreamer.training.loop import train

    logdir = tmp_path / "run"
    cfg = _eval_train_cfg(tmp_path)
    with caplog.at_level("INFO", logger="dreamer.evaluation.evaluator"):
        result = train(cfg)
    assert "eval worker ready on cpu" in caplog.text
    assert str(tmp_path / "xdg") in caplog.text

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/return", "eval/length", "eval/updates"} <= tags, sorted(tags)
    lengths = [e.value for e in acc.Scalars("eval/length")]
    updates = [e.value for e in acc.Scalars("eval/updates")]
    assert all(0 < n <= 50 for n in lengths)
    # the final weights (after the last update) were evaluated too
    assert max(updates) == result["updates"] > 0
    assert len(list((logdir / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_eval_with_pixels_writes_episode_gif_and_frame_strip(tmp_path):
    from PIL import Image, ImageSequence
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dreamer.training.loop import train

    logdir = tmp_path / "run"
    cap = 30
    cfg = _eval_train_cfg(
        tmp_path,
        "env.pixels=true",
        "env.camera.height=32",
        "env.camera.width=32",
        "model.obs_keys=[policy]",  # the worker records frames the model does not read
        f"eval.video_max_frames={cap}",
    )
    train(cfg)

    acc = EventAccumulator(str(logdir / "tensorboard"))
    acc.Reload()
    eval_steps = {e.step for e in acc.Scalars("eval/updates")}
    gifs = sorted((logdir / "videos").glob("eval_*.gif"))
    assert {int(p.stem.removeprefix("eval_")) for p in gifs} == eval_steps
    with Image.open(gifs[-1]) as gif:
        frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    assert frames.shape[1:] == (32, 32, 3) and 1 < len(frames) <= cap
    assert all(frame.std() > 5 for frame in frames)  # a rendered scene, not a blank image
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).max() > 0  # the cartpole moves

    strips = acc.Images("eval/frames")
    assert {e.step for e in strips} == eval_steps
    assert strips[-1].height == 32 and strips[-1].width == 32 * min(8, cap)
