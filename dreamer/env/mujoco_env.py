"""Batched TorchRL env running embedded Isaac Lab task replicas on MuJoCo.

The env looks like Isaac Lab seen through TorchRL's ``IsaacLabWrapper``: batch size ``(N,)``,
an ``Composite(policy=...)`` observation (plus ``pixels`` when a camera is asked for), a bounded
action, ``(N, 1)`` reward and done flags, all on ``device``. It follows TorchRL's reset
semantics rather than Isaac's same-step autoreset: a finished env keeps its true final
observation in ``("next", "policy")`` and is reset only when ``reset`` is called with a
``"_reset"`` mask (as ``env.rollout`` and collectors do).

Physics runs on CPU through ``mujoco.rollout``: one call steps all N envs ``decimation`` times on
a persistent thread pool, returning the final physics state and the sensor readings. Everything
else is vectorised numpy over the batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from dreamer.env.tasks import TASKS, BatchedTask, TaskSpec

EMBEDDED_TASKS: dict[str, TaskSpec] = dict(TASKS)
"""Task ids this backend can run, mapped to their constants."""

_FULLPHYSICS = mujoco.mjtState.mjSTATE_FULLPHYSICS.value


class MujocoBatchedEnv(EnvBase):
    """N copies of an embedded Isaac Lab task stepped in parallel on MuJoCo.

    Args:
        task: ``"Isaac-Ant-v0"`` or ``"Isaac-Cartpole-v0"`` (see :data:`EMBEDDED_TASKS`).
        num_envs: number of parallel envs N.
        device: where output tensors live (physics always runs on CPU).
        seed: seed of the reset noise; ``None`` draws one from the OS.
        num_threads: physics threads. Default: one per usable core (at least 4), reduced for small batches so
            that each thread steps at least ``task_spec.min_envs_per_thread`` envs.
        max_episode_length: override of the episode length in control steps (tests use a short
            one); defaults to the task's (Ant 960, Cartpole 300).
        pixels: camera settings (``env.camera``: ``height``, ``width``, ``pos``, ``rot``) to add
            a ``pixels`` observation, uint8 ``(N, H, W, 3)`` from a camera following each robot
            (:mod:`dreamer.env.mujoco_render`); ``None`` renders nothing.

    Attributes:
        task_spec: the task's constants (:class:`~dreamer.env.tasks.TaskSpec`), including
            ``obs_slices`` naming each observation term's columns.
        task: the batched task logic; ``task.reward_terms`` holds the raw reward terms of the
            last step.
        model: the ``mujoco.MjModel`` shared by all envs.
    """

    batch_locked = True

    def __init__(
        self,
        task: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        num_threads: int | None = None,
        *,
        max_episode_length: int | None = None,
        pixels: Mapping | None = None,
    ) -> None:
        if task not in EMBEDDED_TASKS:
            raise ValueError(
                f"Unknown embedded task {task!r}. Known tasks: {', '.join(sorted(EMBEDDED_TASKS))}."
            )
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        spec = EMBEDDED_TASKS[task]
        self.task_spec = spec
        self.num_envs = num_envs
        self.max_episode_length = (
            spec.max_episode_length if max_episode_length is None else int(max_episode_length)
        )
        self.model = mujoco.MjModel.from_xml_path(str(spec.xml_path))
        self._check_model(spec)
        self.task: BatchedTask = spec.task_cls(self.model, num_envs)

        self._nthread = self._pick_threads(num_threads)
        self._pool = mj_rollout.Rollout(nthread=self._nthread)
        self._datas = [mujoco.MjData(self.model) for _ in range(max(1, self._nthread))]
        self._models = [self.model] * num_envs

        nq, nv = self.model.nq, self.model.nv
        nstate = mujoco.mj_stateSize(self.model, _FULLPHYSICS)
        # FULLPHYSICS state layout: [time, qpos, qvel, act, ...] (components in mjtState bit order).
        self._qpos_sl = slice(1, 1 + nq)
        self._qvel_sl = slice(1 + nq, 1 + nq + nv)
        dec = spec.decimation
        self._state = np.zeros((num_envs, nstate))
        self._ctrl = np.zeros((num_envs, dec, self.model.nu))
        self._state_out = np.zeros((num_envs, dec, nstate))
        self._sens_out = np.zeros((num_envs, dec, self.model.nsensordata))
        self._action = np.zeros((num_envs, spec.act_dim))
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._obs = np.zeros((num_envs, spec.obs_dim))
        self._rng = np.random.default_rng(seed)
        self.camera = None
        if pixels is not None:
            from dreamer.env.mujoco_render import MujocoCamera

            self.camera = MujocoCamera(spec.xml_path, num_envs, pixels, device=str(self.device))
            self._pixels = np.zeros(
                (num_envs, self.camera.height, self.camera.width, 3), dtype=np.uint8
            )
        self._make_specs()
        if seed is not None:
            self.set_seed(seed)
        # A valid placeholder state for a step before the first reset; its own generator keeps
        # ``seed=s`` equivalent to ``set_seed(s)`` right before the first reset.
        self._reset_envs(np.arange(num_envs), np.random.default_rng(0))

    def _pick_threads(self, num_threads: int | None) -> int:
        """Pool size for ``mujoco.rollout``; 0 means stepping on the calling thread.

        An explicit ``num_threads`` is used as given (capped at N). The default is one thread per
        usable core, at least four. On the 16-core H100 machine the 4,096-env Ant stepped in 11.9 ms
        with 16 threads, 11.4 with 20, 13.4 with 24 and 19.1 with 32 (the old default of two per
        core; ``bench/bench_contention.py``, 2026-11-24). On 2 pinned cores 4 threads stepped it
        ~10-15% faster than 2 (CPU use 1.9 instead of 1.75 cores, since a core no longer idles
        while the other finishes its last chunk), hence the floor. The default shrinks for small
        batches so that each thread gets ``min_envs_per_thread`` envs, because waking a pool costs
        more than stepping a few cheap envs.
        """
        if num_threads is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            cap = self.num_envs // self.task_spec.min_envs_per_thread
            num_threads = min(max(cores or os.cpu_count() or 1, 4), cap)
        nthread = min(num_threads, self.num_envs)
        return nthread if nthread > 1 else 0

    def _check_model(self, spec: TaskSpec) -> None:
        """Fail loudly if the MJCF drifted from the task constants it must encode."""
        m = self.model
        if not np.isclose(m.opt.timestep, spec.physics_dt, rtol=0, atol=1e-12):
            raise ValueError(
                f"{spec.xml_path.name}: timestep {m.opt.timestep} != {spec.physics_dt}"
            )
        if m.nu != spec.act_dim or not np.allclose(m.actuator_gear[:, 0], spec.action_scale):
            raise ValueError(
                f"{spec.xml_path.name}: actuators do not encode scale {spec.action_scale}"
            )

    def _make_specs(self) -> None:
        n, spec, dev = self.num_envs, self.task_spec, self.device
        self.observation_spec = Composite(
            policy=Unbounded(shape=(n, spec.obs_dim), dtype=torch.float32, device=dev),
            shape=(n,),
            device=dev,
        )
        if self.camera is not None:
            self.observation_spec["pixels"] = Bounded(
                0, 255, shape=self._pixels.shape, dtype=torch.uint8, device=dev
            )
        self.action_spec = Bounded(
            low=-1.0, high=1.0, shape=(n, spec.act_dim), dtype=torch.float32, device=dev
        )
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=dev)
        self.done_spec = Composite(
            {
                key: Categorical(n=2, shape=(n, 1), dtype=torch.bool, device=dev)
                for key in ("done", "terminated", "truncated")
            },
            shape=(n,),
            device=dev,
        )

    # ------------------------------------------------------------------ TorchRL API

    def _set_seed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    def _to_device(self, array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
        # Always a fresh copy: returned tensors share memory with it and must never change later.
        tensor = torch.from_numpy(np.array(array, dtype=dtype, copy=True))
        if self.device is not None and self.device.type != "cpu":
            tensor = tensor.to(self.device, non_blocking=True)
        return tensor

    def _output(self, obs, reward, terminated, truncated) -> TensorDictBase:
        n = self.num_envs
        done = terminated | truncated
        out = TensorDict(
            {
                "policy": self._to_device(obs, np.float32),
                "reward": self._to_device(reward.reshape(n, 1), np.float32),
                "done": self._to_device(done.reshape(n, 1), np.bool_),
                "terminated": self._to_device(terminated.reshape(n, 1), np.bool_),
                "truncated": self._to_device(truncated.reshape(n, 1), np.bool_),
            },
            batch_size=self.batch_size,
            device=self.device,
        )
        if self.camera is not None:
            out.set("pixels", self._to_device(self._pixels, np.uint8))
        return out

    def _render(self, env_ids: np.ndarray | None = None) -> None:
        """Refresh the cached camera images of ``env_ids`` (all envs by default)."""
        if self.camera is None:
            return
        if env_ids is None:
            self._pixels[:] = self.camera.render(self._state[:, self._qpos_sl])
        elif env_ids.size:
            self._pixels[env_ids] = self.camera.render(self._state[env_ids, self._qpos_sl])

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").detach()
        action = action.reshape(self.num_envs, self.task_spec.act_dim).to("cpu", torch.float64)
        np.clip(action.numpy(), -1.0, 1.0, out=self._action)
        # Isaac holds the processed action over every physics substep of the control step.
        self._ctrl[:] = self._action[:, None, :]
        self._pool.rollout(
            self._models,
            self._datas,
            self._state,
            self._ctrl,
            skip_checks=True,
            nstep=self.task_spec.decimation,
            state=self._state_out,
            sensordata=self._sens_out,
            # MuJoCo's default, about ten chunks per thread, balances envs of uneven cost best.
            chunk_size=None,
        )
        self._state[:] = self._state_out[:, -1]
        # Isaac increments the counter before evaluating time_out (>= max_episode_length).
        self._elapsed += 1
        obs, reward, terminated = self.task.on_step(
            self._state[:, self._qpos_sl],
            self._state[:, self._qvel_sl],
            # Forces of the last physics step, as Newton reports body_parent_f after a step.
            self._sens_out[:, -1],
            self._action,
        )
        truncated = self._elapsed >= self.max_episode_length
        self._obs[:] = obs
        self._render()
        return self._output(obs, reward, terminated, truncated)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            env_ids = np.arange(self.num_envs)
        else:
            env_ids = np.flatnonzero(mask.reshape(self.num_envs).to("cpu").numpy())
        if env_ids.size:
            self._reset_envs(env_ids)
            self._render(env_ids)
        false = np.zeros(self.num_envs, dtype=bool)
        # Envs outside the mask report their current observation, untouched.
        return self._output(self._obs, np.zeros(self.num_envs), false, false).exclude("reward")

    def _reset_envs(self, env_ids: np.ndarray, rng: np.random.Generator | None = None) -> None:
        qpos, qvel = self.task.sample_reset(self._rng if rng is None else rng, env_ids.size)
        self._write_state(env_ids, qpos, qvel)
        self._elapsed[env_ids] = 0
        self._obs[env_ids] = self.task.on_reset(env_ids, qpos, qvel)

    def _write_state(self, env_ids: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self._state[env_ids] = 0.0  # time, actuator state, ... restart from zero
        self._state[env_ids, self._qpos_sl] = qpos
        self._state[env_ids, self._qvel_sl] = qvel

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Stop the physics thread pool and release the camera."""
        pool = self.__dict__.get("_pool")
        if pool is not None and pool.rollout_ is not None:
            pool.close()
        if self.__dict__.get("camera") is not None:
            self.camera.close()
        super().close(raise_if_closed=raise_if_closed)

    # ------------------------------------------------------------------ direct state access

    def get_physics_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the current ``(qpos (N, nq), qvel (N, nv))``."""
        return self._state[:, self._qpos_sl].copy(), self._state[:, self._qvel_sl].copy()

    def set_physics_state(
        self, qpos: np.ndarray, qvel: np.ndarray, env_ids: np.ndarray | None = None
    ) -> None:
        """Overwrite the physics state of ``env_ids`` (all envs by default).

        Like Isaac's ``write_*_to_sim``: the episode counter, the last action and the cached
        observation are kept; the next ``step`` observes the new state. History-dependent reward
        terms (Ant's progress potential) are re-anchored at the new state.
        """
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids).reshape(-1)
        qpos = np.broadcast_to(np.asarray(qpos, dtype=np.float64), (ids.size, self.model.nq))
        qvel = np.broadcast_to(np.asarray(qvel, dtype=np.float64), (ids.size, self.model.nv))
        self._write_state(ids, qpos, qvel)
        self.task.rebase(ids, qpos, qvel)

    @property
    def physics_threads(self) -> int:
        """Threads of the physics pool (0: the envs are stepped on the calling thread)."""
        return self._nthread

    @property
    def elapsed_steps(self) -> np.ndarray:
        """Control steps taken in each env's current episode (Isaac's ``episode_length_buf``)."""
        return self._elapsed.copy()

    @elapsed_steps.setter
    def elapsed_steps(self, steps: np.ndarray) -> None:
        # Written like Isaac's episode_length_buf, e.g. by rsl_rl to spread the first time-outs.
        self._elapsed[:] = np.asarray(steps, dtype=np.int64).reshape(self.num_envs)
