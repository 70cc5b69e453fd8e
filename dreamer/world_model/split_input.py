"""MLPs on the model state ``(state, belief)`` that never concatenate it.

Every head of DreamerV3 reads ``cat([state, belief])``, and TorchRL's ``DreamerV3MLP`` makes that
concatenation itself when given several inputs. On the imagined trajectories (``B * T`` start
states times ``H + 1`` steps) the copy is the size of the whole trajectory's features: 168 MB at
16x64 for each of the five head passes of an update (reward, continuation, critic, critic for the
value loss, slow critic), and 10.7 GB each at 1024x64. The first linear layer then also keeps that
copy for its weight gradient, so at large batch the copies, not the model, fill the GPU.

``x @ W.T`` on a concatenation is the sum of each part times its own columns of ``W``, so
:func:`linear_on_parts` computes the first layer as one matmul per input, accumulated in place
(``addmm``), on views of the same weight. The parameters, their initialisation and state-dict
keys are ``DreamerV3MLP``'s, so checkpoints load either way; the sums are reassociated, so
results agree to float rounding, not bitwise (``tests/test_split_input.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrl.modules import DreamerV3MLP


def linear_on_parts(layer: nn.Linear, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``layer(torch.cat(parts, -1))`` without the concatenation.

    ``parts`` share their leading shape; their widths must add up to ``layer.in_features``.
    """
    widths = [part.shape[-1] for part in parts]
    if sum(widths) != layer.in_features:
        raise ValueError(
            f"inputs of widths {widths} do not add up to the layer's {layer.in_features} inputs"
        )
    leading = parts[0].shape[:-1]
    columns = layer.weight.split(widths, dim=1)
    out = F.linear(parts[0].reshape(-1, widths[0]), columns[0], layer.bias)
    for part, weight in zip(parts[1:], columns[1:], strict=True):
        out = torch.addmm(out, part.reshape(-1, part.shape[-1]), weight.t())
    return out.reshape(*leading, -1)


class SplitInputMLP(DreamerV3MLP):
    """TorchRL's ``DreamerV3MLP`` whose first layer reads several inputs without concatenating
    them (:func:`linear_on_parts`); one input runs the plain stack."""

    # Read by callers that hold the parts (dreamer.imagination.model_env.FeatureHead); a compiled
    # module forwards attribute reads to this one.
    reads_parts = True

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) == 1:
            return self.model(inputs[0])
        first, rest = self.model[0], self.model[1:]
        return rest(linear_on_parts(first, inputs))
