"""A tiny batched env with staggered, short episodes, for agent and replay contract tests."""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class ToyBatchedEnv(EnvBase):
    """``N`` envs; obs = [position, velocity, step, env id]; episode ``i`` lasts 3 + (i % 5) steps.

    The ``step`` entry of the observation counts steps within the episode, so a test can tell
    exactly where episodes begin in any replayed sequence.
    """

    def __init__(
        self, num_envs: int = 4, obs_dim: int = 4, action_dim: int = 2, device: str = "cpu"
    ):
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.obs_dim = obs_dim
        self.observation_spec = Composite(policy=Unbounded((num_envs, obs_dim)), shape=(num_envs,))
        self.action_spec = Bounded(-1.0, 1.0, (num_envs, action_dim))
        self.reward_spec = Unbounded((num_envs, 1))
        flag = Categorical(2, (num_envs, 1), dtype=torch.bool)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(num_envs,)
        )
        self.lengths = 3 + torch.arange(num_envs) % 5
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.pos = torch.zeros(num_envs)

    def _obs(self) -> torch.Tensor:
        obs = torch.zeros(self.batch_size[0], self.obs_dim)
        obs[:, 0] = self.pos
        obs[:, 1] = self.t.float()
        obs[:, 2] = torch.arange(self.batch_size[0]).float()
        return obs

    def _reset(self, tensordict=None, **kwargs):
        mask = torch.ones(self.batch_size[0], dtype=torch.bool)
        if tensordict is not None and "_reset" in tensordict.keys():
            mask = tensordict.get("_reset").reshape(-1)
        self.t[mask] = 0
        self.pos[mask] = 0.0
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool)
        return TensorDict(
            {
                "policy": self._obs(),
                "done": done,
                "terminated": done.clone(),
                "truncated": done.clone(),
            },
            self.batch_size,
        )

    def _step(self, tensordict):
        action = tensordict.get("action")
        self.pos = self.pos + action[:, 0]
        self.t += 1
        terminated = (self.t >= self.lengths).unsqueeze(-1)
        reward = (-(self.pos.abs()) + 1.0).unsqueeze(-1)
        return TensorDict(
            {
                "policy": self._obs(),
                "reward": reward,
                "done": terminated.clone(),
                "terminated": terminated,
                "truncated": torch.zeros_like(terminated),
            },
            self.batch_size,
        )

    def _set_seed(self, seed):
        torch.manual_seed(seed)
