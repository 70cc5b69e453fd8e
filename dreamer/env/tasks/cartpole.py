"""Isaac-Cartpole-v0 replica: Isaac Lab 3.0's manager-based cartpole on MuJoCo, batched over N envs.

Facts mirrored from ``isaaclab_tasks/core/cartpole/cartpole_manager_env_cfg.py``, the generic
``isaaclab.envs.mdp`` terms and ``isaaclab_assets/robots/cartpole.py`` (isaaclab 3.0.0):

* observation: joint positions then joint velocities relative to the defaults (both zero), in the
  order [slider_to_cart, cart_to_pole]; the pole angle is not wrapped;
* action: force = 100 * a on ``slider_to_cart`` (no clip in Isaac; we clip a to [-1, 1]);
* rewards: alive 1.0, terminating -2.0 (plain, so scaled by dt like every term), pole angle
  (wrapped to [-pi, pi]) squared -1.0, |cart velocity| -0.01, |pole velocity| -0.005;
* terminated when the cart leaves [-3, 3] m (strict inequalities); truncated after 5 s (300 steps);
  the manager-based task has no pole-angle termination;
* reset: cart U(-1, 1) m and U(-0.5, 0.5) m/s, pole U(-pi/4, pi/4) rad and rad/s, around zero.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import mujoco
import numpy as np

from dreamer.env.tasks.base import ASSETS_DIR, BatchedTask, TaskSpec, wrap_to_pi

JOINT_NAMES = ["slider_to_cart", "cart_to_pole"]
CART_BOUNDS = (-3.0, 3.0)
CART_POS_RANGE = (-1.0, 1.0)
CART_VEL_RANGE = (-0.5, 0.5)
POLE_POS_RANGE = (-0.25 * math.pi, 0.25 * math.pi)
POLE_VEL_RANGE = (-0.25 * math.pi, 0.25 * math.pi)

OBS_SLICES = MappingProxyType({"joint_pos_rel": slice(0, 2), "joint_vel_rel": slice(2, 4)})

REWARD_WEIGHTS = MappingProxyType(
    {
        "alive": 1.0,
        "terminating": -2.0,
        "pole_pos": -1.0,
        "cart_vel": -0.01,
        "pole_vel": -0.005,
    }
)


class CartpoleTask(BatchedTask):
    """Vectorised observation / reward / termination terms of Isaac-Cartpole-v0."""

    def __init__(self, model: mujoco.MjModel, num_envs: int) -> None:
        super().__init__(model, num_envs)
        self.qpos_adr = self.joint_qpos_adr(JOINT_NAMES)
        self.dof_adr = self.joint_dof_adr(JOINT_NAMES)
        slider = model.joint("slider_to_cart").id
        # Reset offsets are clamped to the (soft) limits; only the slider has any.
        self.cart_limits = tuple(model.jnt_range[slider]) if model.jnt_limited[slider] else None

    def sample_reset(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Cart and pole offsets drawn the way the two ``reset_joints_by_offset`` events do."""
        qpos = np.zeros((n, self.model.nq))
        qvel = np.zeros((n, self.model.nv))
        cart_pos = rng.uniform(*CART_POS_RANGE, n)
        if self.cart_limits is not None:
            cart_pos = np.clip(cart_pos, *self.cart_limits)
        cart_vel = rng.uniform(*CART_VEL_RANGE, n)
        pole_pos = rng.uniform(*POLE_POS_RANGE, n)
        pole_vel = rng.uniform(*POLE_VEL_RANGE, n)
        qpos[:, self.qpos_adr[0]], qvel[:, self.dof_adr[0]] = cart_pos, cart_vel
        qpos[:, self.qpos_adr[1]], qvel[:, self.dof_adr[1]] = pole_pos, pole_vel
        return qpos, qvel

    def observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """[cart pos, pole angle, cart vel, pole angular vel]."""
        return np.concatenate([qpos[:, self.qpos_adr], qvel[:, self.dof_adr]], axis=-1)

    def on_reset(self, env_ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """No history to reset; the first observation is the sampled state."""
        return self.observe(qpos, qvel)

    def on_step(
        self, qpos: np.ndarray, qvel: np.ndarray, sensordata: np.ndarray, action: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Terminations, then rewards, then observations: the order of Isaac's step()."""
        cart_pos = qpos[:, self.qpos_adr[0]]
        terminated = (cart_pos > CART_BOUNDS[1]) | (cart_pos < CART_BOUNDS[0])
        terms = self.reward_terms
        terms["alive"] = (~terminated).astype(np.float64)
        terms["terminating"] = terminated.astype(np.float64)
        terms["pole_pos"] = np.square(wrap_to_pi(qpos[:, self.qpos_adr[1]]))
        terms["cart_vel"] = np.abs(qvel[:, self.dof_adr[0]])
        terms["pole_vel"] = np.abs(qvel[:, self.dof_adr[1]])
        return self.observe(qpos, qvel), self.weighted_reward(), terminated


CARTPOLE_SPEC = TaskSpec(
    name="Isaac-Cartpole-v0",
    xml_path=ASSETS_DIR / "cartpole.xml",
    obs_dim=4,
    act_dim=1,
    action_scale=100.0,
    episode_length_s=5.0,
    reward_weights=REWARD_WEIGHTS,
    obs_slices=OBS_SLICES,
    task_cls=CartpoleTask,
    min_envs_per_thread=128,  # a cartpole step costs ~2 us: threads pay off only in bulk
    description="Balance a pole on a cart pushed along a rail (Isaac Lab Isaac-Cartpole).",
)
CartpoleTask.spec = CARTPOLE_SPEC
