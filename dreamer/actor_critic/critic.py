"""The critic: a two-hot value distribution on the model state (slow EMA copy in the loss)."""

from __future__ import annotations

from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.modules import SymExpTwoHot

from dreamer.imagination.model_env import FeatureHead
from dreamer.world_model.networks import ModelSize
from dreamer.world_model.split_input import SplitInputMLP


def make_value_mlp(size: ModelSize) -> SplitInputMLP:
    """Value MLP: logits over ``num_bins`` symexp bins, zero-initialised output layer."""
    return SplitInputMLP(
        size.feature, size.num_bins, depth=size.depth, num_cells=size.units, outscale=0.0
    )


def make_critic(value_mlp, size: ModelSize) -> TensorDictSequential:
    """Critic module writing ``state_value_logits`` and the decoded ``state_value``."""
    logits = TensorDictModule(
        FeatureHead(value_mlp), in_keys=["state", "belief"], out_keys=["state_value_logits"]
    )
    decode = TensorDictModule(
        SymExpTwoHot(size.num_bins), in_keys=["state_value_logits"], out_keys=["state_value"]
    )
    return TensorDictSequential(logits, decode)
