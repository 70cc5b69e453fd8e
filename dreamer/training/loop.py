"""The training loop: collect -> store -> update (at the train ratio) -> log -> checkpoint."""

from __future__ import annotations

import copy
import logging
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dreamer.agent import build_agent
from dreamer.collector.collector import make_collector
from dreamer.env.factory import add_episode_stats, make_base_env
from dreamer.evaluation.evaluator import start_evaluator
from dreamer.imagination.plots import open_loop_figure
from dreamer.imagination.rollouts import open_loop_prediction
from dreamer.policy.acting import add_acting_state
from dreamer.replay.buffer import make_replay_buffer, select_for_storage, to_sequences
from dreamer.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dreamer.training.config_check import resolve_compile, validate_config
from dreamer.training.distributed import (
    NullLogger,
    average_agent_gradients,
    broadcast_state,
    check_in_sync,
    init_distributed,
    shutdown_distributed,
)
from dreamer.training.metrics import TensorBoardLogger, finished_episode_stats
from dreamer.training.update import check_finite, update_step
from dreamer.world_model.networks import model_size_from_config

log = logging.getLogger(__name__)


def make_training_env(cfg: DictConfig):
    """Batched env with episode stats and the acting-state primer."""
    env = make_base_env(
        cfg.task, int(cfg.env.num_envs), str(cfg.env.device), int(cfg.seed), cfg.env.backend
    )
    env = add_episode_stats(env)
    return add_acting_state(env, model_size_from_config(cfg.model), env.action_spec.shape[-1])


def checkpoint_payload(agent, cfg, updates: int, frames: int, ratio_state: float) -> dict:
    """Everything a resumed run needs to continue where this one stopped."""
    return {
        "loss": agent.loss.state_dict(),
        "optimizer": agent.optimizer.state_dict(),
        "updates": updates,
        "frames": frames,
        "owed_updates": ratio_state,
        "rng": rng_state(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def log_open_loop_figure(logger: TensorBoardLogger, agent, sequences, task: str, step: int) -> None:
    """Log the open-loop prediction figure for one replay row that holds a single segment."""
    whole = ~sequences["is_init"].reshape(sequences.shape)[:, 1:].any(-1)
    if not bool(whole.any()):
        return
    row = sequences[whole.nonzero()[0]]
    context = row.shape[1] // 2
    prediction = open_loop_prediction(agent, row, context, row.shape[1] - context)
    logger.log_figure("imagination/open_loop", open_loop_figure(prediction, task), step)
    logger.log({"imagination/open_loop_error_last": prediction["error"][-1]}, step)


def train(cfg: DictConfig) -> dict:
    """Run DreamerV3 as configured; returns final counters and the last logged metrics."""
    resolve_compile(cfg)
    validate_config(cfg)
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

    updates, frames, owed = 0, 0, 0.0
    if cfg.resume is not None:
        state = load_checkpoint(cfg.resume, map_location=cfg.device)
        agent.loss.load_state_dict(state["loss"])
        agent.optimizer.load_state_dict(state["optimizer"])
        updates, frames, owed = state["updates"], state["frames"], state["owed_updates"]
        set_rng_state(state["rng"])
        log.info("resumed from %s at update %d, frame %d", cfg.resume, updates, frames)
    grad_hook = None
    if rank.enabled:
        broadcast_state([agent.loss], src=0)
        grad_hook = partial(average_agent_gradients, world_size=rank.world_size)

    remaining = max(int(cfg.collector.total_frames) - frames, int(cfg.collector.frames_per_batch))
    collector_cfg = copy.deepcopy(cfg)
    collector_cfg.collector.total_frames = remaining
    if frames:
        # The replay restarts empty on resume; re-fill it with random steps before training.
        collector_cfg.collector.init_random_frames = max(
            int(cfg.batch_length) * int(cfg.env.num_envs), int(cfg.collector.frames_per_batch)
        )
    collector = make_collector(collector_cfg, env, agent.policy)
    updates_per_frame = float(cfg.train_ratio) / (int(cfg.batch_size) * int(cfg.batch_length))
    logger = TensorBoardLogger(logdir, purge_step=frames or None) if rank.is_main else NullLogger()
    ckpt_dir = logdir / "checkpoints"
    init_frames = int(collector_cfg.collector.init_random_frames)
    collected_this_run = 0
    metrics = None
    world_model_loss: list[torch.Tensor] = []
    last_time, last_frames, last_updates = time.perf_counter(), frames, updates
    bar = tqdm(
        total=int(cfg.collector.total_frames),
        initial=frames,
        unit="frame",
        disable=not cfg.log.progress_bar or not rank.is_main,
        dynamic_ncols=True,
    )
    try:
        for batch in collector:
            n_new = batch.numel()
            frames += n_new
            collected_this_run += n_new
            replay.extend(select_for_storage(batch))
            episode = finished_episode_stats(batch)
            if episode:
                logger.log(episode, frames)
            if collected_this_run >= init_frames:
                owed += n_new * updates_per_frame
                while owed >= 1.0:
                    owed -= 1.0
                    sequences = to_sequences(replay.sample().to(cfg.device), int(cfg.batch_length))
                    metrics = update_step(agent, sequences, grad_hook)
                    world_model_loss.append(
                        sum(v for k, v in metrics.items() if k.startswith("loss_model_"))
                    )
                    updates += 1
                    if updates % int(cfg.log.every_updates) == 0:
                        check_finite(metrics, updates)
                        logger.log(
                            {f"train/{k}": v for k, v in metrics.items() if v.numel() == 1}, frames
                        )
                    if rank.is_main and updates % int(cfg.log.image_every_updates) == 0:
                        log_open_loop_figure(logger, agent, sequences, cfg.task, frames)
                    if rank.is_main and updates % int(cfg.checkpoint.every_updates) == 0:
                        save_checkpoint(
                            ckpt_dir / "last.pt",
                            checkpoint_payload(agent, cfg, updates, frames, owed),
                        )
            now = time.perf_counter()
            logger.log(
                {
                    "perf/env_steps_per_s": (frames - last_frames) / (now - last_time),
                    "perf/updates_per_s": (updates - last_updates) / (now - last_time),
                    "perf/updates": updates,
                },
                frames,
            )
            last_time, last_frames, last_updates = now, frames, updates
            if evaluator is not None:
                evaluator.step(agent.policy, updates, frames, logger)
            bar.update(n_new)
            bar.set_postfix(updates=updates, ret=episode.get("episode/return", float("nan")))
        if evaluator is not None:
            evaluator.close(agent.policy, updates, frames, logger)
    finally:
        bar.close()
        collector.shutdown()
        if evaluator is not None:
            evaluator.stop()
    if metrics is not None:
        check_finite(metrics, updates)
    if rank.enabled:
        check_in_sync([agent.loss], rank)
        shutdown_distributed(rank)
    if rank.is_main:
        save_checkpoint(ckpt_dir / "last.pt", checkpoint_payload(agent, cfg, updates, frames, owed))
    logger.close()
    history = torch.stack(world_model_loss).cpu() if world_model_loss else torch.empty(0)
    return {
        "updates": updates,
        "frames": frames,
        "metrics": metrics,
        "agent": agent,
        "world_model_loss": history,
    }
