"""The acting policy: encode the observation, filter the RSSM state, sample an action.

The RSSM ``state``/``belief`` and the previous action live in the env's tensordict: a
``TensorDictPrimer`` creates them (zeros) on reset and carries them from step to step, and
``InitTracker`` marks the first step of each episode so the filter restarts there.
"""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Unbounded
from torchrl.envs import EnvBase, InitTracker, TensorDictPrimer, TransformedEnv
from torchrl.modules import RSSMStateEstimatorV3

from dreamer.world_model.networks import ModelSize

RECURRENT_KEYS = ("state", "belief", "previous_action")


def make_state_primer(size: ModelSize, action_dim: int) -> TensorDictPrimer:
    """Primer for the recurrent acting state (card fix 1).

    The specs are unbatched; ``expand_specs=True`` expands them to the env's batch so a
    ``(N,)`` env gets ``(N, stoch)``, ``(N, deter)`` and ``(N, A)`` entries. Without it a
    batched env rejects the primer.
    """
    return TensorDictPrimer(
        expand_specs=True,
        random=False,
        default_value=0.0,
        state=Unbounded(size.stoch),
        belief=Unbounded(size.deter),
        previous_action=Unbounded(action_dim),
    )


def add_acting_state(env: EnvBase, size: ModelSize, action_dim: int) -> TransformedEnv:
    """Append the episode-start tracker and the recurrent-state primer to a batched env."""
    if not isinstance(env, TransformedEnv):
        env = TransformedEnv(env)
    env.append_transform(InitTracker())
    env.append_transform(make_state_primer(size, action_dim))
    return env


class KeepAction(nn.Module):
    """Copies the sampled action so the next step's filter sees it as the previous action."""

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return action.detach().clone()


def make_acting_policy(
    encoder: nn.Module,
    prior: nn.Module,
    posterior: nn.Module,
    actor,
    obs_keys: tuple[str, ...] = ("policy",),
) -> TensorDictSequential:
    """Policy used by the collector (and the evaluator): obs -> posterior -> action.

    ``obs_keys`` are the observations the encoder reads, in its argument order.
    """
    encode = TensorDictModule(encoder, in_keys=list(obs_keys), out_keys=["encoded_latents"])
    estimator = RSSMStateEstimatorV3(prior, posterior)
    keep = TensorDictModule(KeepAction(), in_keys=["action"], out_keys=["previous_action"])
    return TensorDictSequential(encode, estimator, actor, keep)
