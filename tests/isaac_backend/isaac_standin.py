"""A stand-in that behaves like Isaac Lab's manager-based RL env.

The stand-in mirrors what matters about ``isaaclab.envs.ManagerBasedRLEnv.step`` (3.0):
same-step autoreset (finished envs are reset inside ``step()`` and the returned obs is the new
episode's first), ``extras["final_obs"]`` written only on steps where some env resets (when
``compute_final_obs``), and reward/terminated/truncated buffers mutated in place at every step.
It is injected as ``isaaclab.envs`` (:func:`install_fake_isaaclab`, the ``fake_isaaclab``
fixture) the way TorchRL's own tests fake Isaac Lab.

Observation layout (so the tests can tell which step an obs belongs to):
``[episode_id, step_in_episode, env_index, sum(last_action), 0...]``.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torchrl.envs.libs.gym as trl_gym
import torchrl.envs.libs.isaac_lab as trl_isaac

gym = pytest.importorskip("gymnasium")  # TorchRL's GymWrapper needs it; see docs/isaaclab.md

OBS_DIM, ACT_DIM = 6, 3


class FakeManagerBasedEnv(gym.Env):
    """Stand-in for ``isaaclab.envs.ManagerBasedEnv``."""


class FakeManagerBasedRLEnv(FakeManagerBasedEnv):
    """Same-step-autoreset vector env with Isaac Lab's step/reset contract."""

    is_vector_env = True
    metadata = {"render_modes": [None], "autoreset_mode": "same-step"}

    def __init__(self, cfg: types.SimpleNamespace) -> None:
        self.cfg = cfg
        n = cfg.scene.num_envs
        self.num_envs = n
        self.device = cfg.sim.device
        # staggered episode ends: env i times out after trunc_len[i] steps; env 1 also
        # terminates (falls) after 2 steps of every other episode
        self.trunc_len = torch.tensor(cfg.trunc_len[:n])
        self.single_observation_space = gym.spaces.Dict(
            {"policy": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)}
        )
        self.observation_space = gym.spaces.Dict(
            {"policy": gym.spaces.Box(-np.inf, np.inf, (n, OBS_DIM), np.float32)}
        )
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, (ACT_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (n, ACT_DIM), np.float32)
        self.episode_id = torch.zeros(n)
        self.episode_length_buf = torch.zeros(n, dtype=torch.long)
        self.last_action = torch.zeros(n, ACT_DIM)
        self.reward_buf = torch.zeros(n)
        self.reset_terminated = torch.zeros(n, dtype=torch.bool)
        self.reset_time_outs = torch.zeros(n, dtype=torch.bool)
        self.extras: dict = {}
        self.reset_calls = torch.zeros(n, dtype=torch.long)  # how often each env was reset
        self.max_abs_action = 0.0

    def _compute_obs(self) -> dict:
        obs = torch.zeros(self.num_envs, OBS_DIM)
        obs[:, 0] = self.episode_id
        obs[:, 1] = self.episode_length_buf.float()
        obs[:, 2] = torch.arange(self.num_envs).float()
        obs[:, 3] = self.last_action.sum(-1)
        return {"policy": obs}  # a fresh tensor, like ObservationManager.compute()

    def _reset_idx(self, env_ids: torch.Tensor) -> None:
        self.episode_id[env_ids] += 1
        self.episode_length_buf[env_ids] = 0
        self.last_action[env_ids] = 0
        self.reset_calls[env_ids] += 1

    def reset(self, seed=None, env_ids=None, options=None):
        if env_ids is None:
            env_ids = torch.arange(self.num_envs)
        self._reset_idx(env_ids)
        return self._compute_obs(), self.extras

    def step(self, action: torch.Tensor):
        self.max_abs_action = max(self.max_abs_action, float(action.abs().max()))
        self.last_action = action.clone()
        self.episode_length_buf += 1
        # in place, like Isaac Lab's managers
        self.reward_buf[:] = self.episode_length_buf.float() * 10 + torch.arange(self.num_envs)
        self.reset_time_outs[:] = self.episode_length_buf >= self.trunc_len
        falls = (torch.arange(self.num_envs) == self.cfg.fall_env) & (self.episode_length_buf == 2)
        falls &= self.episode_id % 2 == 1
        self.reset_terminated[:] = falls & ~self.reset_time_outs
        reset_ids = (self.reset_terminated | self.reset_time_outs).nonzero().squeeze(-1)
        if len(reset_ids) > 0:
            if getattr(self.cfg, "compute_final_obs", False):
                self.extras["final_obs"] = self._compute_obs()
            self._reset_idx(reset_ids)
        return (
            self._compute_obs(),
            self.reward_buf,
            self.reset_terminated,
            self.reset_time_outs,
            self.extras,
        )

    def close(self) -> None:
        pass


def make_cfg(num_envs=4, compute_final_obs: bool | None = True, trunc_len=(3, 5, 4, 7), fall_env=1):
    cfg = types.SimpleNamespace(
        fall_env=fall_env,
        scene=types.SimpleNamespace(num_envs=num_envs),
        sim=types.SimpleNamespace(device="cpu"),
        trunc_len=list(trunc_len),
        seed=None,
        episode_length_s=16.0,
    )
    if compute_final_obs is not None:  # None: an Isaac Lab version without the option (2.x)
        cfg.compute_final_obs = compute_final_obs
    return cfg


def install_fake_isaaclab(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Inject the stand-in as ``isaaclab.envs`` and tell TorchRL Isaac Lab is present."""
    pkg = types.ModuleType("isaaclab")
    pkg.__path__ = []
    envs = types.ModuleType("isaaclab.envs")
    envs.ManagerBasedEnv = FakeManagerBasedEnv
    envs.ManagerBasedRLEnv = FakeManagerBasedRLEnv
    envs.DirectRLEnv = type("DirectRLEnv", (gym.Env,), {})
    envs.DirectMARLEnv = type("DirectMARLEnv", (), {})
    pkg.envs = envs
    monkeypatch.setitem(sys.modules, "isaaclab", pkg)
    monkeypatch.setitem(sys.modules, "isaaclab.envs", envs)
    monkeypatch.setattr(trl_isaac, "_has_isaaclab", True)
    monkeypatch.setattr(trl_gym, "_has_isaaclab", True)
    return envs


def make_env(cfg):
    from dreamer.env.isaaclab_terminal_obs import wrap_isaaclab_env

    return wrap_isaaclab_env(FakeManagerBasedRLEnv(cfg), device="cpu")


def expected_episode_ends(trunc_len, steps, fall_env=1):
    """(env, step) pairs where the stand-in's episodes end, by simulating its rules."""
    ends = set()
    for e, tl in enumerate(trunc_len):
        ep, t = 1, 0
        for s in range(steps):
            t += 1
            if t >= tl or (e == fall_env and t == 2 and ep % 2 == 1):
                ends.add((e, s))
                ep, t = ep + 1, 0
    return ends
