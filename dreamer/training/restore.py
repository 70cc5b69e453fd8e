"""What goes into a checkpoint and the one way back: resume a run, or rebuild an agent from it.

:func:`load_agent_state` is the only code that puts checkpointed weights (world model, actor,
critic, slow critic, return normaliser: all inside ``agent.loss``) and the optimizer state back;
both :func:`resume_training` (``resume=``) and :func:`agent_from_checkpoint` (notebooks,
evaluation) go through it. Weights are stored under their uncompiled names, so a checkpoint from
a compiled CUDA run loads into an eager agent and the other way round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.data import TensorDictReplayBuffer

from dreamer.agent import Agent, build_agent
from dreamer.training.checkpoint import (
    TRAINING_KEYS,
    CheckpointError,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from dreamer.training.replay_state import load_replay_state, replay_state

log = logging.getLogger(__name__)

COMPILED_PREFIX = "_orig_mod."
"""What ``torch.compile``'s wrapper inserts into the state-dict keys of a compiled module."""

# Sections that decide the shapes of the weights: a resume must not change them.
SHAPE_KEYS = ("task", "model")


def agent_state(agent: Agent) -> dict[str, torch.Tensor]:
    """All weights of the agent under their uncompiled names."""
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in agent.loss.state_dict().items()}


def load_agent_state(agent: Agent, state: dict[str, Any], optimizer: bool = True) -> None:
    """Load the checkpoint's weights into ``agent`` and, if ``optimizer``, its optimizer state."""
    own = agent.loss.state_dict()
    own_names = {k.replace(COMPILED_PREFIX, ""): k for k in own}
    weights = {
        own_names.get(k.replace(COMPILED_PREFIX, ""), k): v for k, v in state["loss"].items()
    }
    misfits = sorted(set(own) ^ set(weights)) or [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in weights.items()
        if v.shape != own[k].shape
    ]
    if misfits:
        raise CheckpointError(
            f"The checkpoint's weights do not fit this agent ({len(misfits)} differ, e.g. "
            f"{misfits[0]}); use the run's own task= and model settings."
        )
    agent.loss.load_state_dict(weights)
    if optimizer:
        agent.optimizer.load_state_dict(state["optimizer"])


def training_payload(
    agent: Agent,
    cfg: DictConfig,
    counters: dict[str, float],
    env=None,
    replay: TensorDictReplayBuffer | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs: weights, optimizer, ``counters``, RNGs, config, replay.

    ``counters`` holds ``updates``, ``frames`` (env steps) and ``owed_updates`` (the fractional
    updates the train ratio still owes).
    """
    payload = {
        "loss": agent_state(agent),
        "optimizer": agent.optimizer.state_dict(),
        **counters,
        "rng": rng_state(env),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if replay is not None:
        payload["replay"] = replay_state(replay)
    return payload


def read_resume_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Load ``cfg.resume`` and check it fits ``cfg``, before anything expensive is built."""
    state = load_checkpoint(cfg.resume, map_location=cfg.device, required=TRAINING_KEYS)
    current = OmegaConf.to_container(cfg, resolve=True)
    for key in SHAPE_KEYS:
        if state["config"].get(key) != current.get(key):
            raise CheckpointError(
                f"{cfg.resume} was trained with {key}={state['config'].get(key)}, this run has "
                f"{key}={current.get(key)}; resume with the checkpoint's {key} settings."
            )
    return state


@dataclass
class ResumePoint:
    """Where a resumed run continues."""

    updates: int
    frames: int
    owed_updates: float
    replay_steps: int


def resume_training(
    state: dict[str, Any], agent: Agent, env, replay: TensorDictReplayBuffer, num_envs: int
) -> ResumePoint:
    """Put ``state`` (from :func:`read_resume_checkpoint`) back into the agent, RNGs and replay."""
    load_agent_state(agent, state, optimizer=True)
    set_rng_state(state["rng"], env)
    steps = load_replay_state(replay, state["replay"], num_envs) if "replay" in state else 0
    return ResumePoint(
        int(state["updates"]), int(state["frames"]), float(state["owed_updates"]), steps
    )


def agent_from_checkpoint(path: str | Path, num_envs: int | None = None, device: str = "cpu"):
    """Return ``(env, agent, cfg)`` with the checkpoint's weights; compile is off.

    ``num_envs`` overrides the env count of the run (the agent does not depend on it).
    """
    from dreamer.training.loop import make_training_env

    state = load_checkpoint(path, map_location=device, required=("loss", "config"))
    cfg = OmegaConf.create(state["config"])
    cfg.device = device
    cfg.env.device = device
    cfg.compile.enabled = False
    if num_envs is not None:
        cfg.env.num_envs = num_envs
    env = make_training_env(cfg)
    agent: Agent = build_agent(cfg, env)
    load_agent_state(agent, state, optimizer=False)
    agent.loss.eval()
    return env, agent, cfg
