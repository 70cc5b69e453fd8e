"""The training loop: collect -> store -> update (at the train ratio) -> log -> checkpoint."""

from __future__ import annotations

import copy
import logging
import time
from contextlib import nullcontext
from functools import partial
from math import inf
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dreamer.agent import build_agent
from dreamer.collector.collector import make_batch_source
from dreamer.env.factory import add_episode_stats, camera_config, make_base_env
from dreamer.evaluation.evaluator import start_evaluator
from dreamer.imagination.plots import frame_strip_figure, open_loop_figure
from dreamer.imagination.rollouts import open_loop_prediction
from dreamer.policy.acting import add_acting_state
from dreamer.replay.buffer import make_replay_buffer, sample_sequences, select_for_storage
from dreamer.replay.prefetch import SamplePrefetcher
from dreamer.training.checkpoint import save_checkpoint
from dreamer.training.config_check import (
    fit_devices_to_visible_gpus,
    resolve_compile,
    resolve_device,
    validate_config,
)
from dreamer.training.distributed import (
    NullLogger,
    average_agent_gradients,
    broadcast_state,
    check_in_sync,
    init_distributed,
    shutdown_distributed,
)
from dreamer.training.graphed_update import make_learner
from dreamer.training.guard import NonFiniteGuard
from dreamer.training.learner_clock import LearnerClock
from dreamer.training.metrics import TensorBoardLogger, finished_episode_stats
from dreamer.training.pacing import UpdatePacer
from dreamer.training.restore import (
    ResumePoint,
    read_resume_checkpoint,
    resume_training,
    training_payload,
)
from dreamer.training.signals import StopOnSignal
from dreamer.world_model.belief_branch import set_belief_branch
from dreamer.world_model.fused_ops import set_fused_kernels
from dreamer.world_model.networks import model_size_from_config

log = logging.getLogger(__name__)


def make_training_env(cfg: DictConfig):
    """Batched env with episode stats and the acting-state primer."""
    env = make_base_env(
        cfg.task,
        int(cfg.env.num_envs),
        str(cfg.env.device),
        int(cfg.seed),
        cfg.env.backend,
        pixels=camera_config(cfg.env),
        physics_threads=cfg.env.get("physics_threads"),
    )
    env = add_episode_stats(env)
    return add_acting_state(env, model_size_from_config(cfg.model), env.action_spec.shape[-1])


def indexed_cuda_device(device: str) -> torch.device:
    """``cuda`` -> ``cuda:<current>``: ``torch.cuda.set_device`` rejects a CUDA device without index."""
    device = torch.device(device)
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def use_tf32(enabled: bool) -> None:
    """TF32 products for float32 matmuls and convolutions on CUDA (the learner benchmark's too)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def use_blas(library: str) -> None:
    """Make ``library`` (``learner.blas``: cublas or cublaslt) torch's preferred CUDA BLAS for
    this process (the learner benchmark's too)."""
    torch.backends.cuda.preferred_blas_library(library)


def log_open_loop_figure(logger: TensorBoardLogger, agent, sequences, task: str, step: int) -> None:
    """Log the open-loop prediction figure for one replay row that holds a single segment."""
    whole = ~sequences["is_init"].reshape(sequences.shape)[:, 1:].any(-1)
    if not bool(whole.any()):
        return
    row = sequences[whole.nonzero()[0]]
    context = row.shape[1] // 2
    prediction = open_loop_prediction(agent, row, context, row.shape[1] - context)
    logger.log_figure("imagination/open_loop", open_loop_figure(prediction, task), step)
    if "real_pixels" in prediction:
        logger.log_figure("imagination/frames", frame_strip_figure(prediction), step)
    logger.log({"imagination/open_loop_error_last": prediction["error"][-1]}, step)


def train(cfg: DictConfig) -> dict:
    """Run DreamerV3 as configured; returns final counters and the last logged metrics.

    SIGINT/SIGTERM stop it after the current update with a final checkpoint (``stopped_by``
    names the signal); so does ``time_limit_s`` (``stopped_by="time_limit_s"``). A non-finite
    loss or gradient raises :class:`~dreamer.training.update.NonFiniteLossError` and leaves the
    last good checkpoint.
    """
    resolve_device(cfg)
    resolve_compile(cfg)
    for change in fit_devices_to_visible_gpus(cfg):
        log.warning("falling back to one GPU: %s", change)
    validate_config(cfg)
    if torch.device(cfg.device).type == "cuda":
        # The learner's device is the current one (graph capture, timing events); the env and
        # the acting copy may live on another GPU (pipeline.acting_device).
        torch.cuda.set_device(indexed_cuda_device(cfg.device))
        use_tf32(bool(cfg.learner.tf32))
        use_blas(str(cfg.learner.blas))
    set_fused_kernels(bool(cfg.learner.fused_kernels))  # before the learner's graph is captured
    set_belief_branch(bool(cfg.learner.get("belief_branch", False)))  # likewise
    resume_state = read_resume_checkpoint(cfg) if cfg.resume is not None else None
    rank = init_distributed(cfg)  # per-rank device and seed; rank 0 alone writes files
    torch.manual_seed(int(cfg.seed))
    logdir = Path(cfg.logdir)
    if rank.is_main:
        logdir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, logdir / "config.yaml")
    # Spawned before this process does any CUDA work, so the worker never inherits a context.
    evaluator = start_evaluator(cfg) if rank.is_main else None

    env = make_training_env(cfg)
    agent = build_agent(cfg, env)
    replay = make_replay_buffer(
        int(cfg.replay.capacity), int(cfg.batch_size), int(cfg.batch_length), cfg.replay.device
    )

    point = ResumePoint(updates=0, frames=0, owed_updates=0.0, replay_steps=0)
    if resume_state is not None:
        point = resume_training(resume_state, agent, env, replay, int(cfg.env.num_envs))
        del resume_state
        log.info("resumed from %s at %s", cfg.resume, point)
    updates, frames, owed = point.updates, point.frames, point.owed_updates
    grad_hook = None
    if rank.enabled:
        broadcast_state([agent.loss], src=0)
        grad_hook = partial(average_agent_gradients, world_size=rank.world_size)

    remaining = max(int(cfg.collector.total_frames) - frames, int(cfg.collector.frames_per_batch))
    collector_cfg = copy.deepcopy(cfg)
    collector_cfg.collector.total_frames = remaining
    if frames:
        # Without saved replay contents, re-fill the replay with random steps before training.
        collector_cfg.collector.init_random_frames = (
            0
            if point.replay_steps
            else max(
                int(cfg.batch_length) * int(cfg.env.num_envs), int(cfg.collector.frames_per_batch)
            )
        )
    collector = make_batch_source(collector_cfg, env, agent.policy)
    acting_copy = cfg.pipeline.mode in ("async", "process")
    sync_every = int(cfg.pipeline.weight_sync_every) if acting_copy else 0
    updates_per_frame = float(cfg.train_ratio) / (int(cfg.batch_size) * int(cfg.batch_length))
    # Hide events the interrupted run logged after its checkpoint; the curves continue from there.
    logger = (
        TensorBoardLogger(logdir, purge_step=frames + 1 if frames else None)
        if rank.is_main
        else NullLogger()
    )
    ckpt_path = logdir / "checkpoints" / "last.pt"
    guard = NonFiniteGuard()

    def save() -> None:
        guard.check()  # never let a non-finite update into a checkpoint
        if not rank.is_main:
            return
        counters = {"updates": updates, "frames": frames, "owed_updates": owed}
        save_checkpoint(
            ckpt_path,
            training_payload(agent, cfg, counters, env, replay if cfg.checkpoint.replay else None),
        )
        # Curves up to the checkpoint reach the disk with it; a resumed run continues from there.
        logger.writer.flush()

    init_frames = int(collector_cfg.collector.init_random_frames)
    collected_this_run = 0
    metrics, learner = None, None
    clock, frames_at_first_update = LearnerClock(cfg.device), frames
    batches = SamplePrefetcher(
        partial(sample_sequences, replay, int(cfg.batch_size), int(cfg.batch_length), cfg.device),
        torch.device(cfg.device),
        enabled=bool(cfg.replay.prefetch),
    )
    pacer = UpdatePacer(torch.device(cfg.device))
    # Read once, not at every update: an OmegaConf lookup is slow Python.
    log_every, image_every = int(cfg.log.every_updates), int(cfg.log.image_every_updates)
    checkpoint_every = int(cfg.checkpoint.every_updates)
    world_model_loss: list[torch.Tensor] = []
    last_time, last_frames, last_updates = time.perf_counter(), frames, updates
    bar = tqdm(
        total=int(cfg.collector.total_frames),
        initial=frames,
        unit="frame",
        disable=not cfg.log.progress_bar or not rank.is_main,
        dynamic_ncols=True,
    )
    stop = StopOnSignal()
    out_of_time = False
    started = time.perf_counter()  # the wall clock of the curves: env and agent are built
    # Checked between updates too: one collection's updates can take minutes on a CPU.
    deadline = started + float(cfg.time_limit_s) if cfg.get("time_limit_s") is not None else inf
    try:
        with stop:
            for batch in clock.timed(collector, "waiting_for_batch"):
                n_new = batch.numel()
                frames += n_new
                collected_this_run += n_new
                clock.batch_arrived(frames)
                with clock.host_phase("replay_extend"):
                    batches.before_extend()
                    stored = select_for_storage(batch, agent.obs_keys, float(cfg.reward_scale))
                    replay.extend(stored)
                    batches.after_extend()
                episode = finished_episode_stats(batch)
                if episode:
                    logger.log(episode, frames)
                if collected_this_run >= init_frames:
                    owed += n_new * updates_per_frame
                    while owed >= 1.0 and not stop.requested and time.perf_counter() < deadline:
                        owed -= 1.0
                        with clock.host_phase("sampling"):
                            sequences = batches.take()
                        if learner is None:
                            with getattr(collector, "paused", nullcontext)():
                                learner = make_learner(cfg, agent, sequences, grad_hook)
                            frames_at_first_update = frames
                        clock.start()
                        with clock.host_phase("update_launch"):
                            metrics = learner(sequences)
                        clock.stop()
                        with clock.host_phase("sampling"):
                            batches.prefetch()  # the next batch is sampled while this update runs
                        with clock.host_phase("pacing"):
                            pacer.launched()
                        updates += 1
                        if sync_every and updates % sync_every == 0:
                            collector.update_policy_weights_()
                        guard.observe(metrics, updates)
                        world_model_loss.append(
                            sum(v for k, v in metrics.items() if k.startswith("loss_model_"))
                        )
                        if updates % log_every == 0:
                            guard.check()
                            logger.log(
                                {f"train/{k}": v for k, v in metrics.items() if v.numel() == 1},
                                frames,
                            )
                        if rank.is_main and updates % image_every == 0:
                            log_open_loop_figure(logger, agent, sequences, cfg.task, frames)
                        if updates % checkpoint_every == 0:
                            save()
                now = time.perf_counter()
                logger.log(
                    {
                        "time/elapsed_s": now - started,
                        "perf/env_steps_per_s": (frames - last_frames) / (now - last_time),
                        "perf/updates_per_s": (updates - last_updates) / (now - last_time),
                        "perf/updates": updates,
                        "perf/learner_busy": clock.busy_fraction(),
                    },
                    frames,
                )
                last_time, last_frames, last_updates = now, frames, updates
                if evaluator is not None:
                    evaluator.step(agent.policy, updates, frames, logger)
                bar.update(n_new)
                bar.set_postfix(updates=updates, ret=episode.get("episode/return", float("nan")))
                out_of_time = now >= deadline
                if stop.requested or out_of_time:
                    break
            if evaluator is not None:
                evaluator.close(agent.policy, updates, frames, logger)
            if rank.enabled:
                check_in_sync([agent.loss], rank)
            save()
    finally:
        bar.close()
        collector.shutdown()
        if evaluator is not None:
            evaluator.stop()
        if rank.enabled:
            shutdown_distributed(rank)
        logger.close()
    if stop.requested:
        log.warning(
            "stopped by %s at update %d, frame %d; checkpoint %s",
            stop.received,
            updates,
            frames,
            ckpt_path,
        )
    history = torch.stack(world_model_loss).cpu() if world_model_loss else torch.empty(0)
    return {
        "updates": updates,
        "frames": frames,
        "metrics": metrics,
        "agent": agent,
        "world_model_loss": history,
        "weight_syncs": getattr(collector, "weight_syncs", 0),
        "perf": clock.summary(frames - frames_at_first_update),
        "stopped_by": stop.received or ("time_limit_s" if out_of_time else None),
    }
