"""TorchRL's ``IsaacLabWrapper`` with true terminal observations, no buffer aliasing, bounded actions.

Isaac Lab's manager-based envs reset finished sub-envs inside ``step()`` ("same-step autoreset"):
the observation they return for those envs already belongs to the next episode, and with
``cfg.compute_final_obs=True`` the pre-reset observation is in ``extras["final_obs"]``. TorchRL
0.14.1's ``IsaacLabWrapper`` + ``VecGymEnvTransform`` ignore that entry and write NaN into
``("next", obs)`` at done steps; a world model cannot learn from that. :class:`IsaacLabDreamerWrapper`

- writes the true final observation into ``("next", obs)`` at done steps when Isaac Lab provides
  it, and otherwise the (finite) reset observation with ``("next", "final_obs_valid")=False``
  there, so the decoder loss can be masked (``True`` everywhere else, never NaN);
- answers the partial reset TorchRL issues after a done step with the observation Isaac Lab
  computed after its own reset, without resetting those envs a second time (as
  ``VecGymEnvTransform`` does for partial masks; unlike it, also when *every* env finished on the
  same step, where TorchRL would run a full second reset);
- clones everything it emits: Isaac Lab mutates its reward/terminated/truncated buffers in place;
- declares the action spec ``Bounded(-1, 1)`` (Isaac's Box is unbounded, but the joint-effort
  action scales by the gear and saturates beyond +-1) and clamps actions to it.

Build it with :func:`wrap_isaaclab_env`, which drops TorchRL's ``VecGymEnvTransform``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.libs.isaac_lab import IsaacLabWrapper

FINAL_OBS_VALID_KEY = "final_obs_valid"


def _clone_obs(obs: Any) -> Any:
    """Deep-copy an observation dict/tensor so nothing we emit shares Isaac Lab's buffers."""
    if isinstance(obs, torch.Tensor):
        return obs.clone()
    if isinstance(obs, Mapping):
        return {key: _clone_obs(value) for key, value in obs.items()}
    return obs


class IsaacLabDreamerWrapper(IsaacLabWrapper):
    """IsaacLabWrapper with TorchRL terminal-obs semantics for same-step autoreset envs.

    Args:
        env: the gymnasium-made Isaac Lab env (manager-based or direct).
        action_bound: actions are declared ``Bounded(-b, b)`` and clamped to it; ``None`` keeps
            Isaac Lab's own action space.
        **kwargs: forwarded to :class:`~torchrl.envs.libs.isaac_lab.IsaacLabWrapper`.
    """

    def __init__(self, env: Any, *, action_bound: float | None = 1.0, **kwargs: Any) -> None:
        self._action_bound = action_bound
        self._final_obs: Any = None
        self._autoreset_mask: torch.Tensor | None = None
        self._autoreset_obs: TensorDictBase | None = None
        super().__init__(env, **kwargs)

    # ------------------------------------------------------------------ specs
    def _make_specs(self, env: Any, batch_size: torch.Size | None = None) -> None:
        super()._make_specs(env, batch_size=batch_size)
        if self._action_bound is not None:
            b = float(self._action_bound)
            self.action_spec = Bounded(
                -b, b, shape=self.action_spec.shape, dtype=torch.float32, device=self.device
            )
        self.observation_spec[FINAL_OBS_VALID_KEY] = Categorical(
            2, shape=(*self.batch_size, 1), dtype=torch.bool, device=self.device
        )

    @property
    def _data_obs_keys(self) -> list:
        return [k for k in self.observation_spec.keys(True, True) if k != FINAL_OBS_VALID_KEY]

    # ------------------------------------------------------------------ step
    def _output_transform(self, step_outputs_tuple: tuple) -> tuple:
        obs, reward, terminated, truncated, info = step_outputs_tuple
        # Pop (not get): Isaac Lab only writes "final_obs" on steps where some env resets and never
        # clears it, so a stale entry from an earlier step must not be mistaken for this one's.
        self._final_obs = info.pop("final_obs", None) if isinstance(info, dict) else None
        obs, reward, terminated, truncated, done, info = super()._output_transform(
            (obs, reward, terminated, truncated, info)
        )
        # Isaac Lab reuses its reward/termination buffers (and the camera buffer) in place at every
        # step; TorchRL only clones terminated/truncated, and reward is a view. Own everything.
        return (
            _clone_obs(obs),
            reward.clone().float(),
            terminated.clone(),
            truncated.clone(),
            done.clone(),
            info,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._action_bound is not None:
            action = tensordict.get(self.action_key)
            b = float(self._action_bound)
            tensordict = tensordict.clone(False).set(self.action_key, action.clamp(-b, b))
        out = super()._step(tensordict)
        final, self._final_obs = self._final_obs, None
        done = out.get("done").reshape(-1)
        valid = torch.ones((*self.batch_size, 1), dtype=torch.bool, device=self.device)
        if done.any():
            keys = self._data_obs_keys
            # Keep what Isaac Lab returned for the finished envs (their new episode's first obs):
            # it is the answer to the partial reset TorchRL sends right after this step.
            self._autoreset_obs = out.select(*keys).clone()
            self._autoreset_mask = done.clone()
            final_td = self._read_final_obs(final)
            for key in keys:
                value = out.get(key)
                src = None if final_td is None else final_td.get(key, None)
                if src is None:
                    # e.g. camera pixels (not part of Isaac's final_obs) or no compute_final_obs
                    # (Isaac Lab 2.x): the reset obs stays in place, marked invalid.
                    valid[done] = False
                    continue
                ok = done & _finite_rows(src)
                value[ok] = src[ok].to(value.dtype)
                valid[done & ~ok] = False
        else:
            self._autoreset_mask = None
            self._autoreset_obs = None
        # Never hand NaN/inf to the replay buffer (a diverged sim): zero it and mark it invalid.
        for key in self._data_obs_keys:
            value = out.get(key)
            if value.dtype.is_floating_point:
                bad = ~_finite_rows(value)
                if bad.any():
                    out.set(key, torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0))
                    valid[bad] = False
        out.set(FINAL_OBS_VALID_KEY, valid)
        return out

    def _read_final_obs(self, final: Any) -> TensorDictBase | None:
        """Isaac's ``extras["final_obs"]`` as a tensordict keyed like our observations."""
        if final is None:
            return None
        if not isinstance(final, Mapping):
            final = {"observation": final}
        final = self._normalize_observation_keys(_clone_obs(dict(final)))
        known = set(self.observation_spec.keys())
        final = {k: v for k, v in final.items() if k in known}
        if not final:
            return None
        source = self.read_obs(final)
        return TensorDict(source, batch_size=self.batch_size).to(self.device)

    # ------------------------------------------------------------------ reset
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        pending, cached = self._autoreset_mask, self._autoreset_obs
        self._autoreset_mask = self._autoreset_obs = None
        # EnvBase.reset always forwards set_state (False on the rollout path); only a True value
        # asks for a state restore, which TorchRL's wrapper handles.
        extra = {
            k: v for k, v in kwargs.items() if k not in ("set_state", "scene_state", "is_relative")
        }
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None or kwargs.get("set_state") or (reset.all() and pending is None):
            return self._full_reset(tensordict, **kwargs)
        mask = reset.reshape(-1).to(self.device)
        if not mask.any():
            return tensordict.exclude("_reset")
        not_auto = mask if pending is None else mask & ~pending
        if not not_auto.any() and not extra:
            # Every env TorchRL asks to reset was already reset by Isaac Lab inside step():
            # return the obs Isaac computed after that reset instead of resetting again.
            return self._with_valid(cached)
        if not_auto.all() or not not_auto.any():
            return self._full_reset(tensordict, **kwargs)
        # Reset in Isaac exactly the requested envs that were not auto-reset (e.g. an outer
        # StepCounter truncation, or a user's partial reset, which TorchRL's wrapper would turn
        # into a no-op unless native_autoreset=True). Isaac's returned obs covers all envs.
        obs, info = self._partial_reset(reset=not_auto.reshape(reset.shape), **extra)
        return self._with_valid(self._build_reset_tensordict(_clone_obs(obs), info))

    def _full_reset(self, tensordict: TensorDictBase | None, **kwargs: Any) -> TensorDictBase:
        out = super()._reset(tensordict, **kwargs)
        for key in self._data_obs_keys:
            if key in out.keys(True, True):
                out.set(key, out.get(key).clone())
        return self._with_valid(out)

    def _reset_output_transform(self, reset_data: Any) -> Any:
        # Isaac Lab's reset() returns its extras too; a stale final_obs must not survive a reset.
        observations, info = super()._reset_output_transform(reset_data)
        if isinstance(info, dict):
            info.pop("final_obs", None)
        return observations, info

    def _with_valid(self, td: TensorDictBase) -> TensorDictBase:
        td.set(
            FINAL_OBS_VALID_KEY,
            torch.ones((*self.batch_size, 1), dtype=torch.bool, device=self.device),
        )
        return td


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows of ``x`` (batch first) without NaN/inf; always True for integer data."""
    if not x.dtype.is_floating_point:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.isfinite(x.reshape(x.shape[0], -1)).all(-1)


def wrap_isaaclab_env(
    env: Any, *, device: torch.device | str, action_bound: float | None = 1.0, **kwargs: Any
) -> IsaacLabDreamerWrapper:
    """Wrap a gymnasium-made Isaac Lab env; returns the bare :class:`IsaacLabDreamerWrapper`.

    TorchRL's metaclass appends a ``VecGymEnvTransform`` to Isaac Lab envs; it would overwrite our
    terminal observations with NaN and re-enter Isaac on resets, so it is dropped here.
    """
    wrapped: EnvBase = IsaacLabDreamerWrapper(
        env, device=torch.device(device), action_bound=action_bound, **kwargs
    )
    if isinstance(wrapped, TransformedEnv):
        wrapped = wrapped.base_env
    if not isinstance(wrapped, IsaacLabDreamerWrapper):
        raise TypeError(f"Unexpected wrapper type {type(wrapped).__name__}")
    return wrapped
