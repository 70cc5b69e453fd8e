"""Our batched TorchRL env seen through rsl_rl's ``VecEnv`` interface, as Isaac Lab presents it.

Isaac Lab's ``RslRlVecEnvWrapper`` hands rsl_rl an env that resets finished episodes inside
``step``: the observation returned after a done step is the new episode's first one, ``dones`` is
``terminated | truncated`` and ``extras["time_outs"]`` is ``truncated`` (so PPO bootstraps on
time-outs). Our env follows TorchRL's semantics instead (the final observation under ``"next"``, a
separate masked reset), so :class:`RslRlVecEnv` steps it with ``step_and_maybe_reset`` and returns
the root it leaves, which holds the reset observation of every env that finished.

It also sums the env's rewards per episode, so the baseline's curves come from the rewards
themselves rather than from rsl_rl's logger.
"""

from __future__ import annotations

import torch
from rsl_rl.env import VecEnv
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase


class RslRlVecEnv(VecEnv):
    """rsl_rl ``VecEnv`` over a batched env with a ``policy`` observation and ``(N, 1)`` flags.

    Args:
        env: the batched env (e.g. from :func:`dreamer.env.factory.make_base_env`); it must expose
            ``max_episode_length`` and a writable ``elapsed_steps`` (Isaac's
            ``episode_length_buf``).
    """

    def __init__(self, env: EnvBase) -> None:
        self.env = env
        self.num_envs = int(env.batch_size[0])
        self.num_actions = int(env.action_spec.shape[-1])
        self.max_episode_length = int(env.max_episode_length)
        self.device = env.device
        self.cfg = {}
        # rsl_rl's runner never resets: like Isaac Lab's wrapper, start every episode here.
        self._root: TensorDictBase = env.reset()
        self._return = torch.zeros(self.num_envs, device=self.device)
        self._length = torch.zeros(self.num_envs, device=self.device)
        self.reset_episode_stats()

    @property
    def episode_length_buf(self) -> torch.Tensor:
        """Control steps taken in each env's current episode, shape ``(N,)``."""
        return torch.as_tensor(self.env.elapsed_steps, device=self.device)

    @episode_length_buf.setter
    def episode_length_buf(self, steps: torch.Tensor) -> None:
        self.env.elapsed_steps = steps.detach().cpu().numpy()

    def get_observations(self) -> TensorDict:
        """The current observation groups (only ``policy``)."""
        return TensorDict({"policy": self._root.get("policy")}, batch_size=[self.num_envs])

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        """One control step of every env; finished envs come back already reset.

        Returns the observations, rewards ``(N,)``, dones ``(N,)`` (long, as Isaac Lab gives
        them) and extras holding ``time_outs`` ``(N,)`` (the truncated flags).
        """
        self._root.set("action", actions.to(self.device))
        stepped, self._root = self.env.step_and_maybe_reset(self._root)
        after = stepped.get("next")
        rewards = after.get("reward").reshape(self.num_envs)
        done = after.get("done").reshape(self.num_envs)
        self._record(rewards, done)
        extras = {"time_outs": after.get("truncated").reshape(self.num_envs)}
        return self.get_observations(), rewards, done.long(), extras

    def _record(self, rewards: torch.Tensor, done: torch.Tensor) -> None:
        # Sums instead of per-episode lists: no host sync in the rollout loop.
        self._return += rewards
        self._length += 1
        finished = done.to(rewards.dtype)
        self._finished_return += (self._return * finished).sum()
        self._finished_length += (self._length * finished).sum()
        self._finished_count += finished.sum()
        self._return *= 1 - finished
        self._length *= 1 - finished

    def reset_episode_stats(self) -> None:
        """Forget the episodes finished so far (the ones still running keep their sums)."""
        self._finished_return = torch.zeros((), device=self.device)
        self._finished_length = torch.zeros((), device=self.device)
        self._finished_count = torch.zeros((), device=self.device)

    def pop_episode_stats(self) -> dict[str, float]:
        """Mean undiscounted return and length of the episodes finished since the last call.

        Empty when none finished; keys are the Dreamer trainer's TensorBoard tags.
        """
        count = float(self._finished_count)
        stats = {}
        if count > 0:
            stats = {
                "episode/return": float(self._finished_return) / count,
                "episode/length": float(self._finished_length) / count,
                "episode/count": count,
            }
        self.reset_episode_stats()
        return stats

    def close(self) -> None:
        """Close the wrapped env."""
        self.env.close()
