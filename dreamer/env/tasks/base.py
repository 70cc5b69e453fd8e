"""Shared pieces of the embedded task replicas: the task description and the batched task base.

A task is split in two: a frozen :class:`TaskSpec` (constants a reader can check against Isaac
Lab's config) and a :class:`BatchedTask` that turns the physics state of all N envs into
observations, rewards and terminations with vectorised numpy, never looping over envs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class TaskSpec:
    """Constants of one embedded task, named and valued as in its Isaac Lab config.

    ``min_envs_per_thread`` is ours, not Isaac's: the batch size per physics thread below which
    threading costs more than it saves (measured with ``bench/bench_env.py``).
    """

    name: str
    xml_path: Path
    obs_dim: int
    act_dim: int
    action_scale: float
    episode_length_s: float
    reward_weights: Mapping[str, float]
    obs_slices: Mapping[str, slice]
    task_cls: type[BatchedTask]
    physics_dt: float = 1.0 / 120.0
    decimation: int = 2
    min_envs_per_thread: int = 32
    description: str = ""

    @property
    def step_dt(self) -> float:
        """Control period [s]: one env step is ``decimation`` physics steps."""
        return self.physics_dt * self.decimation

    @property
    def max_episode_length(self) -> int:
        """Episode length in control steps, computed the way Isaac Lab does (ceil of s / step_dt)."""
        return math.ceil(self.episode_length_s / self.step_dt)


class BatchedTask:
    """Observation, reward, termination and reset logic of one task over N envs.

    Subclasses set ``spec`` and implement :meth:`sample_reset`, :meth:`on_reset` and
    :meth:`on_step`. Arrays are float64 numpy, batched on the first axis. ``reward_terms``
    holds the raw (unweighted, unscaled by dt) value of every reward term of the last step so
    tests and diagnostics can check them one by one.
    """

    spec: TaskSpec

    def __init__(self, model: mujoco.MjModel, num_envs: int) -> None:
        self.model = model
        self.num_envs = num_envs
        self.reward_terms: dict[str, np.ndarray] = {
            k: np.zeros(num_envs) for k in self.spec.reward_weights
        }

    def joint_qpos_adr(self, names: list[str]) -> np.ndarray:
        """qpos addresses of the named 1-dof joints, in the given order."""
        return np.array([self.model.jnt_qposadr[self.model.joint(n).id] for n in names])

    def joint_dof_adr(self, names: list[str]) -> np.ndarray:
        """qvel addresses of the named 1-dof joints, in the given order."""
        return np.array([self.model.jnt_dofadr[self.model.joint(n).id] for n in names])

    def weighted_reward(self) -> np.ndarray:
        """``step_dt * sum_i weight_i * term_i``: Isaac Lab's RewardManager.compute."""
        total = np.zeros(self.num_envs)
        for name, weight in self.spec.reward_weights.items():
            total += weight * self.reward_terms[name]
        return self.spec.step_dt * total

    def sample_reset(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Fresh reset states ``(qpos (n, nq), qvel (n, nv))`` with the task's reset noise."""
        raise NotImplementedError

    def on_reset(self, env_ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """Reset per-env buffers of ``env_ids`` and return their first observation (n, obs_dim)."""
        raise NotImplementedError

    def on_step(
        self, qpos: np.ndarray, qvel: np.ndarray, sensordata: np.ndarray, action: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Observation (N, obs_dim), reward (N,) and terminated (N,) after one control step.

        ``sensordata`` comes from the last physics step of the control step; ``action`` is the
        clipped action in [-1, 1] that was applied.
        """
        raise NotImplementedError

    def rebase(self, env_ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Re-anchor history-dependent reward terms after the state was overwritten by hand."""


def as_slice_if_consecutive(index: np.ndarray) -> slice | np.ndarray:
    """``index`` as a slice when its entries run ``a, a+1, ..., b-1`` (indexing with it then
    returns a view instead of gathering a copy), else ``index`` unchanged."""
    index = np.asarray(index)
    if index.ndim != 1 or not index.size:
        return index
    start, stop = int(index[0]), int(index[-1]) + 1
    return slice(start, stop) if np.array_equal(index, np.arange(start, stop)) else index


def wrap_to_pi(angles: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi], mapping odd positive multiples of pi to +pi (Isaac's convention)."""
    wrapped = np.mod(angles + np.pi, 2.0 * np.pi)
    return np.where((wrapped == 0.0) & (angles > 0.0), np.pi, wrapped - np.pi)
