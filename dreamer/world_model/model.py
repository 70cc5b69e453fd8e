"""The world model as one TensorDict module: encoder -> RSSM filter -> decoder/reward/continue.

It reads a replay sample ``[B, T]`` in TorchRL's layout and writes, under ``"next"``, everything
TorchRL's ``DreamerV3ModelLoss`` reads: prior/posterior logits, the posterior ``state`` and
``belief``, the symlog reconstruction and its target, reward logits and decoded reward, and the
continue logit.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from dreamer.world_model.networks import ModelSize, symlog
from dreamer.world_model.rssm import observe_sequence

OBS_KEY = "policy"
SYMLOG_TARGET_KEY = "symlog_policy"
RECO_KEY = "reco_symlog_policy"


class WorldModel(TensorDictModuleBase):
    """DreamerV3 world model for a vector observation."""

    def __init__(
        self,
        encoder: nn.Module,
        prior: nn.Module,
        posterior: nn.Module,
        decoder: nn.Module,
        reward_head: nn.Module,
        continue_head: nn.Module,
        two_hot: nn.Module,
        size: ModelSize,
    ):
        super().__init__()
        self.encoder = encoder
        self.prior = prior
        self.posterior = posterior
        self.decoder = decoder
        self.reward_head = reward_head
        self.continue_head = continue_head
        self.two_hot = two_hot
        self.size = size
        self.in_keys = [OBS_KEY, "action", "is_init", ("next", OBS_KEY)]
        self.out_keys = [
            ("next", key)
            for key in (
                "prior_logits",
                "posterior_logits",
                "state",
                "belief",
                SYMLOG_TARGET_KEY,
                RECO_KEY,
                "reward_logits",
                "reward",
                "continue_pred",
            )
        ]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(OBS_KEY)
        next_obs = tensordict.get(("next", OBS_KEY))
        outputs = observe_sequence(
            self.prior,
            self.posterior,
            embed_root=self.encoder(obs),
            embed_next=self.encoder(next_obs),
            action=tensordict.get("action"),
            is_init=tensordict.get("is_init"),
        )
        feature = torch.cat([outputs["state"], outputs["belief"]], -1)
        reward_logits = self.reward_head(feature)
        nxt = tensordict.get("next")
        for key, value in outputs.items():
            nxt.set(key, value)
        reco, target = self.decoder(feature), symlog(next_obs)
        # Where the env could not give the true final obs (final_obs_valid False), the target is
        # the next episode's first obs: replace it by the detached prediction so that row's
        # reconstruction error, and its gradient, are exactly zero.
        valid = nxt.get("final_obs_valid", None)
        if valid is not None:
            target = torch.where(valid, target, reco.detach())
        nxt.set(SYMLOG_TARGET_KEY, target)
        nxt.set(RECO_KEY, reco)
        nxt.set("reward_logits", reward_logits)
        nxt.set("reward", self.two_hot(reward_logits))
        nxt.set("continue_pred", self.continue_head(feature))
        return tensordict
