"""The actor: a bounded-normal policy on the model state ``[state, belief]``."""

from __future__ import annotations

import torch
from tensordict.nn import (
    InteractionType,
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
)
from torch import nn
from torchrl.modules import TanhNormal

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
        scale = (self.max_std - self.min_std) * torch.sigmoid(raw_scale + 2.0) + self.min_std
        return loc, scale


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
