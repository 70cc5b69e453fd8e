"""Rebuild an agent (and a matching env) from a checkpoint, for notebooks and evaluation."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from dreamer.agent import Agent, build_agent
from dreamer.training.checkpoint import load_checkpoint


def agent_from_checkpoint(path: str | Path, num_envs: int | None = None, device: str = "cpu"):
    """Return ``(env, agent, cfg)`` with the checkpoint's weights; compile is off.

    ``num_envs`` overrides the env count of the run (the agent does not depend on it).
    """
    from dreamer.training.loop import make_training_env

    state = load_checkpoint(path, map_location=device)
    cfg = OmegaConf.create(state["config"])
    cfg.device = device
    cfg.env.device = device
    cfg.compile.enabled = False
    if num_envs is not None:
        cfg.env.num_envs = num_envs
    env = make_training_env(cfg)
    agent: Agent = build_agent(cfg, env)
    agent.loss.load_state_dict(state["loss"])
    agent.loss.eval()
    return env, agent, cfg
