"""The world model as one TensorDict module: encoder -> RSSM filter -> decoder/reward/continue.

It reads a replay sample ``[B, T]`` in TorchRL's layout and writes, under ``"next"``, everything
TorchRL's ``DreamerV3ModelLoss`` reads: prior/posterior logits, the posterior ``state`` and
``belief``, one reconstruction (and, for ``policy``, its symlog target) per observation key (see
:mod:`dreamer.world_model.observations`), reward logits and decoded reward, and the continue logit.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from dreamer.world_model.filter_cut import active_cut
from dreamer.world_model.networks import ModelSize, symlog
from dreamer.world_model.observations import HEADS, VECTOR_KEY, as_tuple
from dreamer.world_model.rssm import observe_sequence, prior_where_next_obs_invalid

OBS_KEY = VECTOR_KEY
SYMLOG_TARGET_KEY = HEADS[VECTOR_KEY].target_key
RECO_KEY = HEADS[VECTOR_KEY].reco_key


class WorldModel(TensorDictModuleBase):
    """DreamerV3 world model over the observations ``obs_keys`` (default: the ``policy`` vector).

    With several keys, ``encoder`` takes them in ``obs_keys`` order and ``decoder`` returns one
    reconstruction per key.
    """

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
        obs_keys: tuple[str, ...] = (VECTOR_KEY,),
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
        self.obs_keys = tuple(obs_keys)
        self.heads = [HEADS[key] for key in self.obs_keys]
        self.in_keys = [*self.obs_keys, "action", "is_init", *(("next", k) for k in self.obs_keys)]
        targets = [h.target_key for h in self.heads if h.target_key != h.obs_key]
        self.out_keys = [
            ("next", key)
            for key in (
                "prior_logits",
                "posterior_logits",
                "state",
                "belief",
                *targets,
                *(h.reco_key for h in self.heads),
                "reward_logits",
                "reward",
                "continue_pred",
            )
        ]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = [tensordict.get(key) for key in self.obs_keys]
        next_obs = [tensordict.get(("next", key)) for key in self.obs_keys]
        outputs = observe_sequence(
            self.prior,
            self.posterior,
            embed_root=self.encoder(*obs),
            embed_next=self.encoder(*next_obs),
            action=tensordict.get("action"),
            is_init=tensordict.get("is_init"),
        )
        nxt = tensordict.get("next")
        valid = nxt.get("final_obs_valid", None)
        if valid is not None:
            outputs = prior_where_next_obs_invalid(outputs, valid, self.prior.unimix)
        if (cut := active_cut()) is not None:  # imagination starts from these states
            cut.mark_ready(outputs["state"].device)
        feature = torch.cat([outputs["state"], outputs["belief"]], -1)
        reward_logits = self.reward_head(feature)
        for key, value in outputs.items():
            nxt.set(key, value)
        # Where the env could not give the true final obs (final_obs_valid False), the target is
        # the next episode's first obs: replace it by the detached prediction so that row's
        # reconstruction error, and its gradient, are exactly zero. (Vector targets only: a
        # camera head's target is the stored frame itself.)
        recos = as_tuple(self.decoder(feature))
        for head, value, reco in zip(self.heads, next_obs, recos, strict=True):
            if head.target_key != head.obs_key:
                target = symlog(value)
                if valid is not None:
                    target = torch.where(valid, target, reco.detach())
                nxt.set(head.target_key, target)
            nxt.set(head.reco_key, reco)
        nxt.set("reward_logits", reward_logits)
        nxt.set("reward", self.two_hot(reward_logits))
        nxt.set("continue_pred", self.continue_head(feature))
        return tensordict
