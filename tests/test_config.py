"""Bad input is rejected before anything expensive starts, with a message that says the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import load_config
from hydra.errors import MissingConfigException

from dreamer.training.config_check import ConfigError, resolve_device, validate_config
from dreamer.training.loop import indexed_cuda_device


def _cfg(*overrides):
    return load_config("profile=smoke", *overrides)


def test_smoke_config_is_valid():
    validate_config(_cfg())


def test_unknown_task_lists_known_tasks():
    with pytest.raises(MissingConfigException, match=r"(?s)task/Isaac-Walker-v9.*Isaac-Ant-v0"):
        _cfg("task=Isaac-Walker-v9")
    cfg = _cfg()
    cfg.task = "Isaac-Walker-v9"  # a config built in code skips Hydra's lookup
    with pytest.raises(ValueError, match=r"Isaac-Ant-v0.*Isaac-Cartpole-v0"):
        validate_config(cfg)


def test_task_presets_set_the_task_and_its_reward_scale():
    for task in ("Isaac-Ant-v0", "Isaac-Cartpole-v0"):
        cfg = load_config(f"task={task}")
        assert cfg.task == task
        assert cfg.reward_scale == 60.0  # undoes Isaac Lab's x step_dt (1/60 s) per reward term
    assert load_config().task == "Isaac-Ant-v0"


def test_default_profile_is_the_tuned_one_gpu_run():
    cfg = load_config("task=Isaac-Ant-v0")
    validate_config(cfg)
    assert (cfg.env.num_envs, cfg.batch_size, cfg.batch_length) == (4096, 64, 64)
    assert cfg.pipeline.mode == "async" and cfg.train_ratio == 6
    assert cfg.optim.world_model_lr == 1e-4 and cfg.optim.warmup_steps == 100
    cpu = load_config("task=Isaac-Ant-v0", "profile=cpu")
    validate_config(cpu)
    assert (cpu.env.num_envs, cpu.batch_size, cpu.optim.world_model_lr) == (64, 16, 4e-5)


def test_device_auto_picks_cuda_only_when_present(monkeypatch):
    cfg = load_config()
    assert cfg.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolve_device(cfg)
    assert (cfg.device, cfg.env.device, cfg.replay.device) == ("cpu", "cpu", "cpu")
    cfg = load_config()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    resolve_device(cfg)
    assert (cfg.device, cfg.env.device) == ("cuda", "cuda")


def test_set_device_gets_an_indexed_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert indexed_cuda_device("cuda") == torch.device("cuda", 3)
    assert indexed_cuda_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("limit", [0, -5])
def test_time_limit_must_be_positive(limit):
    with pytest.raises(ConfigError, match="time_limit_s"):
        validate_config(_cfg(f"time_limit_s={limit}"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="env.backend"):
        validate_config(_cfg("env.backend=bullet"))


def test_frames_per_batch_must_be_a_multiple_of_num_envs():
    with pytest.raises(ConfigError, match=r"multiple of env.num_envs \(16\)"):
        validate_config(_cfg("collector.frames_per_batch=250"))


def test_init_random_frames_must_cover_one_sequence_per_env():
    with pytest.raises(
        ConfigError, match=r"init_random_frames \(100\).*16 x 16 = 256.*init_random_frames=256"
    ):
        validate_config(_cfg("collector.init_random_frames=100"))


def test_first_collection_must_cover_one_sequence_per_env():
    with pytest.raises(ConfigError, match=r"frames_per_batch \(128\).*= 256"):
        validate_config(_cfg("collector.frames_per_batch=128"))


@pytest.mark.parametrize("override", ["batch_size=0", "batch_length=-3", "env.num_envs=0"])
def test_non_positive_sizes(override):
    with pytest.raises(ConfigError, match="positive integer"):
        validate_config(_cfg(override))


def test_model_blocks_must_divide_sizes():
    from dreamer.world_model.networks import model_size_from_config

    with pytest.raises(ValueError, match="num_blocks"):
        model_size_from_config(_cfg("model.num_blocks=5").model)


def test_missing_resume_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        validate_config(_cfg(f"resume={tmp_path}/nope.pt"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    import torch

    from dreamer.training import checkpoint

    target = tmp_path / "last.pt"
    checkpoint.save_checkpoint(target, {"updates": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(target, {"updates": 2})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(target)["updates"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_non_finite_loss_names_the_term():
    import torch
    from tensordict import TensorDict

    from dreamer.training.update import NonFiniteLossError, check_finite

    metrics = TensorDict(
        {"loss_model_reco": torch.tensor(1.0), "loss_actor": torch.tensor(float("nan"))}, []
    )
    with pytest.raises(NonFiniteLossError, match="loss_actor.*update 7"):
        check_finite(metrics, 7)


def test_graph_learner_needs_cuda():
    with pytest.raises(ConfigError, match="needs device=cuda"):
        validate_config(_cfg("learner.mode=graph", "device=cpu"))
    with pytest.raises(ConfigError, match="learner.mode must be"):
        validate_config(_cfg("learner.mode=fast"))


def test_pipeline_modes():
    for mode in ("sync", "async", "process"):
        validate_config(_cfg(f"pipeline.mode={mode}"))
    with pytest.raises(ConfigError, match="must be sync, async or process"):
        validate_config(_cfg("pipeline.mode=thread"))
    with pytest.raises(ConfigError, match="with collector.backend=ray use pipeline.mode=sync"):
        validate_config(_cfg("pipeline.mode=process", "collector.backend=ray"))


def test_learner_blas_names_a_cuda_blas_library():
    validate_config(_cfg("learner.blas=cublas"))
    with pytest.raises(ConfigError, match="learner.blas must be one of cublas, cublaslt"):
        validate_config(_cfg("learner.blas=mkl"))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_use_blas_sets_the_library_torch_prefers():
    import torch

    from dreamer.training.loop import use_blas

    before = torch.backends.cuda.preferred_blas_library()
    try:
        for library in ("cublas", "cublaslt"):
            use_blas(library)
            assert torch.backends.cuda.preferred_blas_library().name.lower() == library
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def test_two_gpu_layout_falls_back_to_one_visible_gpu(monkeypatch):
    import torch

    from dreamer.training.config_check import fit_devices_to_visible_gpus

    cfg = _cfg("device=cuda:1", "env.device=cuda:0", "pipeline.mode=async")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    changed = fit_devices_to_visible_gpus(cfg)
    assert cfg.device == "cuda:0" and cfg.env.device == "cuda:0"
    assert cfg.replay.device == "cuda:0" and cfg.collector.storing_device == "cuda:0"
    assert any(line.startswith("device=cuda:1") for line in changed)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = _cfg("device=cuda:1", "env.device=cuda:0")
    assert fit_devices_to_visible_gpus(cfg) == [] and cfg.device == "cuda:1"


def test_the_collection_worker_keeps_the_settings_that_follow_device():
    from dreamer.collector.collector import worker_config

    cfg = _cfg("device=cuda:1", "pipeline.acting_device=cuda:0", "compile.enabled=true")
    worker = worker_config(cfg, torch.device("cuda:0"))
    assert worker["device"] == "cuda:0" and worker["compile"]["enabled"] is False
    assert worker["env"]["device"] == worker["collector"]["storing_device"] == "cuda:1"


def test_physics_threads_size_the_embedded_envs_pool():
    """``env.physics_threads`` reaches the MuJoCo pool (the process-mode worker shares the CPU)."""
    from dreamer.training.loop import make_training_env

    cfg = load_config("profile=smoke", "env.backend=mujoco", "env.num_envs=16")
    cfg.env.physics_threads = 3
    assert make_training_env(cfg).base_env.physics_threads == 3
    cfg.env.physics_threads = 1  # one thread: stepped on the calling thread, no pool
    assert make_training_env(cfg).base_env.physics_threads == 0
