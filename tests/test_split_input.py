"""The heads read ``(state, belief)`` without concatenating them, and compute what
``DreamerV3MLP`` computes on the concatenation."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchrl.modules import DreamerV3MLP

from dreamer.actor_critic.actor import BoundedNormalParams
from dreamer.imagination.model_env import FeatureHead
from dreamer.world_model.networks import ModelSize
from dreamer.world_model.split_input import SplitInputMLP, linear_on_parts

SIZE = ModelSize(
    deter=12, hidden=8, units=16, depth=2, num_categoricals=2, num_classes=3, num_blocks=2
)


class CatRecorder(TorchDispatchMode):
    """Records the output shape of every ``aten.cat`` run inside it, backward included."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.cat:
            self.shapes.append(tuple(out.shape))
        return out


def model_state(*leading: int) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.randn(*leading, SIZE.stoch, requires_grad=True)
    belief = torch.randn(*leading, SIZE.deter, requires_grad=True)
    return state, belief


def test_linear_on_parts_is_the_layer_on_the_concatenation():
    layer = torch.nn.Linear(SIZE.feature, 5)
    state, belief = model_state(3, 4)
    expected = layer(torch.cat([state, belief], -1))
    got = linear_on_parts(layer, (state, belief))
    assert got.shape == (3, 4, 5)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_linear_on_parts_rejects_widths_that_do_not_fill_the_layer():
    layer = torch.nn.Linear(SIZE.feature, 5)
    with pytest.raises(ValueError, match="do not add up"):
        linear_on_parts(layer, (torch.randn(2, SIZE.stoch), torch.randn(2, SIZE.deter - 1)))


def test_split_mlp_loads_a_torchrl_mlp_and_matches_its_values_and_gradients():
    plain = DreamerV3MLP(SIZE.feature, 7, depth=SIZE.depth, num_cells=SIZE.units)
    split = SplitInputMLP(SIZE.feature, 7, depth=SIZE.depth, num_cells=SIZE.units)
    split.load_state_dict(plain.state_dict())  # same keys: checkpoints load either way

    state, belief = model_state(6, 5)
    expected = plain(torch.cat([state, belief], -1))
    expected.square().sum().backward()
    expected_grads = [t.grad.clone() for t in (state, belief, *plain.parameters())]
    state.grad = belief.grad = None

    got = split(state, belief)
    got.square().sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for want, tensor in zip(expected_grads, (state, belief, *split.parameters()), strict=True):
        torch.testing.assert_close(tensor.grad, want, rtol=1e-5, atol=1e-5)
    # One input runs the plain stack.
    torch.testing.assert_close(split(torch.cat([state, belief], -1)), expected)


def test_heads_and_actor_make_no_concatenated_model_state():
    """The copies this removes are [rows, stoch + deter]: five per update on the imagined
    trajectories. A head that concatenated again would show one here, forward or backward."""
    head = FeatureHead(SplitInputMLP(SIZE.feature, 4, depth=SIZE.depth, num_cells=SIZE.units))
    actor = BoundedNormalParams(SIZE, action_dim=3)
    state, belief = model_state(4, 6)
    with CatRecorder() as recorder:
        loc, scale = actor(state, belief)
        (head(state, belief).sum() + loc.sum() + scale.sum()).backward()
    # (The weight gradient of the split first layer is one [units, feature] concatenation.)
    rows = {(4, 6, SIZE.feature), (24, SIZE.feature)}
    assert not rows.intersection(recorder.shapes)
    assert (SIZE.units, SIZE.feature) in recorder.shapes
    # The recorder sees a concatenation where one is made (the check above can fail).
    with CatRecorder() as recorder:
        DreamerV3MLP(SIZE.feature, 4, depth=1, num_cells=8)(state, belief)
    assert recorder.shapes == [(4, 6, SIZE.feature)]


def test_feature_head_gives_other_heads_the_concatenation():
    linear = torch.nn.Linear(SIZE.feature, 2)
    state, belief = model_state(5)
    torch.testing.assert_close(
        FeatureHead(linear)(state, belief), linear(torch.cat([state, belief], -1))
    )


def test_compiled_split_head_still_reads_the_parts():
    compiled = torch.compile(SplitInputMLP(SIZE.feature, 3, depth=1, num_cells=8), backend="eager")
    assert FeatureHead(compiled).head.reads_parts
