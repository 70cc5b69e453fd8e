"""The actor: a bounded-normal policy on the model state ``[state, belief]``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict.nn import (
    InteractionType,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from tensordict.nn.probabilistic import interaction_type
from torch import nn
from torchrl.modules import TanhNormal

from dreamer.actor_critic.fused_action import STD_SHIFT, action_noise, sample_bounded_action
from dreamer.world_model import fused_ops
from dreamer.world_model.deferred_grads import DeferredLayers
from dreamer.world_model.fast_layers import run_layers
from dreamer.world_model.networks import ModelSize
from dreamer.world_model.split_input import SplitInputMLP


class BoundedNormalParams(nn.Module):
    """MLP head giving ``loc`` and ``scale`` with DreamerV3's std bounds (0.1 to 1)."""

    def __init__(
        self, size: ModelSize, action_dim: int, min_std: float = 0.1, max_std: float = 1.0
    ):
        super().__init__()
        self.mlp = SplitInputMLP(
            size.feature, 2 * action_dim, depth=size.depth, num_cells=size.units, outscale=0.01
        )
        self.min_std = min_std
        self.max_std = max_std
        # Set by the imagination loop for one dream (dreamer.imagination.imagine): the MLP's weight
        # gradients are then computed once after the dream's backward pass.
        self.deferred: DeferredLayers | None = None

    @property
    def loop_layers(self) -> nn.Sequential:
        """The MLP's layers, which a loop may run with deferred gradients (:attr:`deferred`)."""
        return self.mlp.model

    def forward(
        self, state: torch.Tensor, belief: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = run_layers(self.loop_layers, (state, belief), self.deferred)
        loc, raw_scale = features.chunk(2, -1)
        scale = (self.max_std - self.min_std) * torch.sigmoid(raw_scale + STD_SHIFT) + self.min_std
        return loc, scale

    def sample(
        self,
        model_state: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """What the actor's TanhNormal draws at random from ``[N, ...]`` model states
        ``(state, belief)`` (or their concatenation, as one tensor), with the fused kernel of
        :mod:`~dreamer.actor_critic.fused_action` (CUDA, or Triton's interpreter).

        Returns the entries the actor writes (``loc``, ``scale``, ``action``) and the action as
        the world model scales it (``action / max(|action|, 1)``).
        """
        features = run_layers(self.loop_layers, model_state, self.deferred)
        loc = features[..., : features.shape[-1] // 2]
        noise = action_noise(loc)
        scale, action, scaled = sample_bounded_action(
            features, noise, low, high, self.min_std, self.max_std
        )
        return {"loc": loc, "scale": scale, "action": action}, scaled


def make_actor(
    size: ModelSize, action_dim: int, device: torch.device | str = "cpu"
) -> ProbabilisticTensorDictSequential:
    """Actor module on ``device``: ``(state, belief) -> action`` in ``[-1, 1]`` (TanhNormal)."""
    params = TensorDictModule(
        BoundedNormalParams(size, action_dim),
        in_keys=["state", "belief"],
        out_keys=["loc", "scale"],
    )
    dist = ProbabilisticTensorDictModule(
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=TanhNormal,
        # Bounds as tensors on the actor's device: Python numbers would be copied to the device
        # on every call, a host transfer that also breaks CUDA-graph capture of the update.
        distribution_kwargs={
            "low": torch.full((action_dim,), -1.0, device=device),
            "high": torch.full((action_dim,), 1.0, device=device),
        },
        default_interaction_type=InteractionType.RANDOM,
        return_log_prob=False,
    )
    return ProbabilisticTensorDictSequential(params, dist).to(device)


ActionSampler = Callable[
    [tuple[torch.Tensor, torch.Tensor] | torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]
]


def fused_action_sampler(policy: nn.Module, like: torch.Tensor) -> ActionSampler | None:
    """``(state, belief) -> (entries, scaled action)`` drawing what ``policy`` would draw now
    (the model state also as one concatenated tensor),
    through the fused action kernel, when ``policy`` is :func:`make_actor`'s actor, it samples at
    random (the current interaction type, or its default) and the fused kernels run on ``like``'s
    device; else None, and the caller runs the policy module itself.

    The draws are those of ``policy(td)``, in the same order (one standard-normal tensor per
    call, from torch's default generator, which is what :func:`make_actor`'s module draws from):
    a dream with either gives the same trajectory (``tests/test_imagine.py``).
    """
    if not (isinstance(policy, ProbabilisticTensorDictSequential) and fused_ops.use_fused(like)):
        return None
    params, dist = policy.module[0], policy.module[-1]
    if len(policy.module) != 2 or not isinstance(params, TensorDictModule):
        return None
    head = params.module
    kwargs = getattr(dist, "distribution_kwargs", {})
    mode = interaction_type() or getattr(dist, "default_interaction_type", None)
    fits = (
        isinstance(head, BoundedNormalParams)
        and list(params.in_keys) == ["state", "belief"]
        and list(params.out_keys) == ["loc", "scale"]
        and isinstance(dist, ProbabilisticTensorDictModule)
        and dist.distribution_class is TanhNormal
        and set(kwargs) == {"low", "high"}
        and list(dist.out_keys) == ["action"]
        and not dist.return_log_prob
        and mode is InteractionType.RANDOM
    )
    if not fits:
        return None
    low, high = kwargs["low"], kwargs["high"]
    return lambda model_state: head.sample(model_state, low, high)
