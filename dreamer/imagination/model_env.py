"""The imagination env: TorchRL's ``DreamerEnv`` driven by the world model's prior and heads.

Card fix 2 lives in :func:`copy_unbatched_specs`: ``ModelBasedEnvBase.set_specs_from_env`` copies
the *batched* specs of a ``(N,)`` env, and a rollout started from ``B`` states then produces
``(B, N, A)`` actions (``(4096, 4096, 8)`` at Isaac scale). We copy, then slice ``[0]`` to drop
the env batch, so the imagination env takes whatever batch of start states it is given.
"""

from __future__ import annotations

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Composite
from torchrl.envs import EnvBase
from torchrl.envs.model_based.dreamer import DreamerEnv
from torchrl.modules import RSSMPriorV3, WorldModelWrapper

from dreamer.imagination.imagine import imagine
from dreamer.world_model.rssm_parts import rssm_parts
from dreamer.world_model.rssm_step import imagine_step


class PriorStep(nn.Module):
    """One imagined step: the prior's sampled next state and belief (logits dropped).

    It computes what ``prior(state, belief, action)`` computes, sampling by Gumbel-max instead of
    TorchRL's cumsum (:func:`dreamer.world_model.rssm_step.imagine_step`).
    """

    def __init__(self, prior: RSSMPriorV3):
        super().__init__()
        self.prior = prior

    def forward(self, state, belief, action):
        return imagine_step(rssm_parts(self.prior).prior, state, belief, action)


class FeatureHead(nn.Module):
    """Applies a head to the model state ``[state, belief]``, optionally followed by a decoding
    module.

    A head that reads the two parts itself (``reads_parts``:
    :class:`~dreamer.world_model.split_input.SplitInputMLP`, every head of our agent, compiled or
    not) gets them as they are, so no concatenated copy is made; any other head gets the
    concatenation.
    """

    def __init__(self, head: nn.Module, decode: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.decode = decode

    def forward(self, state, belief):
        if getattr(self.head, "reads_parts", False):
            out = self.head(state, belief)
        else:
            out = self.head(torch.cat([state, belief], -1))
        return out if self.decode is None else self.decode(out)


class ImaginationEnv(DreamerEnv):
    """TorchRL's ``DreamerEnv`` whose fixed-horizon rollout with a policy is the lean loop of
    :func:`dreamer.imagination.imagine.imagine` (same result, a fraction of the kernels).

    Any other rollout (random actions, auto-reset, early stop, callbacks) is TorchRL's own.
    """

    def __init__(self, *args, prior: RSSMPriorV3, reward: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)
        # Plain references, not submodules: the world model already owns these parameters.
        self.__dict__["lean_modules"] = (prior, reward)

    def rollout(self, max_steps: int, policy=None, callback=None, **kwargs):
        """``EnvBase.rollout``; the actor loss's call (a policy, a start tensordict,
        ``auto_reset=False``, ``break_when_any_done=False``) runs :func:`imagine`."""
        lean = (
            policy is not None
            and callback is None
            and kwargs.get("tensordict") is not None
            and kwargs.get("auto_reset", True) is False
            and kwargs.get("break_when_any_done") is False
            and set(kwargs) == {"tensordict", "auto_reset", "break_when_any_done"}
        )
        if not lean:
            return super().rollout(max_steps, policy, callback, **kwargs)
        prior, reward = self.__dict__["lean_modules"]
        return imagine(rssm_parts(prior).prior, reward, policy, kwargs["tensordict"], max_steps)


def copy_unbatched_specs(model_env: DreamerEnv, batched_env: EnvBase) -> DreamerEnv:
    """Give ``model_env`` the specs of ``batched_env`` without its batch dims (card fix 2).

    The specs are copied from the batched env (so keys, dtypes and bounds always agree) and
    then unbatched with an ``[idx]`` slice over every batch dim.
    """
    model_env.set_specs_from_env(batched_env)
    index = (0,) * len(batched_env.batch_size)
    output_spec = model_env.output_spec.clone()[index] if index else model_env.output_spec.clone()
    input_spec = model_env.input_spec.clone()[index] if index else model_env.input_spec.clone()
    model_env.__dict__["_output_spec"] = output_spec
    model_env.__dict__["_input_spec"] = input_spec
    model_env.batch_size = torch.Size([])
    obs = output_spec["full_observation_spec"]
    model_env.state_spec = Composite(state=obs["state"], belief=obs["belief"], shape=())
    model_env.empty_cache()
    return model_env


def make_imagination_env(
    prior: nn.Module,
    reward_head: nn.Module,
    two_hot: nn.Module,
    batched_env: EnvBase,
    stoch: int,
    deter: int,
    device: torch.device | str | None = None,
) -> DreamerEnv:
    """Build the model-based env used by the actor loss and by the notebooks.

    It runs on ``device`` (default: the batched env's): the learner's GPU when simulation and
    acting live on another one.
    """
    device = torch.device(device) if device is not None else batched_env.device
    transition = TensorDictModule(
        PriorStep(prior), in_keys=["state", "belief", "action"], out_keys=["state", "belief"]
    )
    reward_fn = FeatureHead(reward_head, two_hot)
    reward = TensorDictModule(reward_fn, in_keys=["state", "belief"], out_keys=["reward"])
    model_env = ImaginationEnv(
        world_model=WorldModelWrapper(TensorDictSequential(transition), reward),
        prior_shape=torch.Size([stoch]),
        belief_shape=torch.Size([deter]),
        device=device,
        prior=prior,
        reward=reward_fn,
    )
    return copy_unbatched_specs(model_env, batched_env).to(device)
