"""Deferred weight gradients (dreamer.world_model.deferred_grads) equal plain autograd's."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from dreamer.world_model.deferred_grads import MAX_DEFERRED_ROWS, DeferredLayers, worth_deferring


def toy_loop(
    cell: nn.Linear,
    block: torch.Tensor,
    block_bias: torch.Tensor,
    head: nn.Linear,
    x0: torch.Tensor,
    inputs: torch.Tensor,
    deferred: DeferredLayers | None,
    bias_outside: bool = False,
):
    """A recurrence using a linear, a block-linear and a linear plus an input at every step.

    ``bias_outside``: the deferred block-linear layer leaves its bias to the caller (as the
    fused GRU kernel adds it), which adds it detached; the layer must still make its gradient."""
    h = x0
    if deferred is not None:
        (h,) = deferred.anchor(h)
    outputs = []
    for t in range(inputs.shape[0]):
        if deferred is None:
            a = cell(h)
            blocks = torch.baddbmm(
                block_bias.view(2, 1, -1), h.unflatten(-1, (2, -1)).transpose(0, 1), block
            )
            out = inputs[t] + h @ head.weight.t()
        else:
            a = deferred.linear(h, cell.weight)
            grouped = h.unflatten(-1, (2, -1)).transpose(0, 1)
            blocks = deferred.block_linear(grouped, block, add_bias=not bias_outside)
            if bias_outside:
                blocks = blocks + block_bias.detach().view(2, 1, -1)
            out = inputs[t] + deferred.linear(h, head.weight)
        h = torch.tanh(a + blocks.transpose(0, 1).flatten(-2))
        outputs.append(out)
    # The last step's output reaches the loss, the last state does not: a layer output unused
    # at some steps must not break the pairing of inputs and gradients.
    return torch.stack(outputs).square().sum()


def parameters(seed: int = 0):
    torch.manual_seed(seed)
    cell = nn.Linear(8, 8)
    block = nn.Parameter(torch.randn(2, 4, 4) * 0.3)
    block_bias = nn.Parameter(torch.randn(8) * 0.1)
    head = nn.Linear(8, 5, bias=False)
    x0 = torch.randn(3, 8, requires_grad=True)
    inputs = torch.randn(6, 3, 5, requires_grad=True)
    return cell, block, block_bias, head, x0, inputs


def gradients(deferred: bool, bias_outside: bool = False) -> list[torch.Tensor]:
    cell, block, block_bias, head, x0, inputs = parameters()
    layers = None
    if deferred:
        layers = DeferredLayers(
            [(cell.weight, cell.bias), (block, block_bias), (head.weight, None)]
        )
    toy_loop(cell, block, block_bias, head, x0, inputs, layers, bias_outside).backward()
    tensors = [cell.weight, cell.bias, block, block_bias, head.weight, x0, inputs]
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("bias_outside", [False, True])
def test_deferred_gradients_equal_autograd(bias_outside: bool):
    plain, deferred = gradients(False), gradients(True, bias_outside)
    for expected, got in zip(plain, deferred, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert expected.abs().sum() > 0


def test_deferred_gradients_add_to_other_uses_of_a_weight():
    """A weight also used outside the loop gets both contributions, as autograd adds them."""
    results = []
    for deferred in (False, True):
        cell, block, block_bias, head, x0, inputs = parameters()
        layers = (
            DeferredLayers([(cell.weight, cell.bias), (block, block_bias), (head.weight, None)])
            if deferred
            else None
        )
        loss = toy_loop(cell, block, block_bias, head, x0, inputs, layers)
        (loss + cell(x0).sum()).backward()
        results.append(cell.weight.grad.clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_layers_refuse_use_before_anchor():
    cell, *_ = parameters()
    layers = DeferredLayers([(cell.weight, cell.bias)])
    with pytest.raises(RuntimeError, match="anchor"):
        layers.linear(torch.randn(2, 8), cell.weight)


def test_deferral_only_for_few_rows_with_grad():
    """Many rows per step would keep gigabytes of gradients (256x64 imagination ran out of an
    H100's memory); no recording without grad or for weights that want none."""
    weights = [(torch.zeros(2, requires_grad=True), None)]
    assert worth_deferring(16, weights) and worth_deferring(MAX_DEFERRED_ROWS, weights)
    assert not worth_deferring(MAX_DEFERRED_ROWS + 1, weights)
    assert not worth_deferring(16, [(torch.zeros(2), None)])
    with torch.no_grad():
        assert not worth_deferring(16, weights)


def test_a_loop_whose_weights_get_no_gradient_leaves_nothing_behind():
    """Recorded inputs must not keep the loop's graph alive (a reference cycle through autograd's
    C++ graph leaked every imagination's activations until this was fixed)."""
    cell, block, block_bias, head, x0, inputs = parameters()
    layers = DeferredLayers([(cell.weight, cell.bias), (block, block_bias), (head.weight, None)])
    toy_loop(cell, block, block_bias, head, x0, inputs, layers)  # no backward at all
    alive = weakref.ref(layers.layers[id(cell.weight)].inputs[-1])
    del layers
    gc.collect()
    assert alive() is None


def test_block_input_gradient_reaches_the_rows_without_a_copy():
    """The block-linear input is a block-major view of rows; its gradient is written in the rows'
    layout, deferred or not (``rssm_step.block_linear``), so the view's backward copies nothing
    (autograd's own bmm gradient made one copy per layer and step), and the gradients are
    autograd's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dreamer.world_model.rssm_step import block_linear

    class BackwardCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.nodes: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            node = torch._C._current_autograd_node()
            copies = (torch.ops.aten.clone, torch.ops.aten.copy_)
            if node is not None and func.overloadpacket in copies:
                self.nodes.append(node.name())
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    rows = torch.randn(3, 8)
    weight, bias = torch.randn(2, 4, 5), torch.randn(10)
    copies, grads = {}, {}
    for mode in ("autograd", "deferred", "block_linear"):
        x = rows.clone().requires_grad_()
        w, b = nn.Parameter(weight.clone()), nn.Parameter(bias.clone())
        if mode == "autograd":
            view = x.unflatten(-1, (2, -1)).transpose(0, 1)
            out = torch.baddbmm(b.view(2, 1, -1), view, w)
        elif mode == "deferred":
            layers = DeferredLayers([(w, b)])
            view = layers.anchor(x)[0].unflatten(-1, (2, -1)).transpose(0, 1)
            out = layers.block_linear(view, w)
        else:
            out = block_linear(x, w, b)
        with BackwardCopies() as recorder:
            out.square().sum().backward()
        copies[mode], grads[mode] = recorder.nodes, (x.grad, w.grad, b.grad)
    assert "ViewBackward0" in copies["autograd"]  # the check can fail
    assert copies["deferred"] == copies["block_linear"] == []
    for mode in ("deferred", "block_linear"):
        for got, expected in zip(grads[mode], grads["autograd"], strict=True):
            torch.testing.assert_close(got, expected)
