"""The benchmark's op and FLOP counter counts what a matrix product costs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from op_count import count_ops  # noqa: E402


def test_a_linear_layer_forward_and_backward_costs_its_two_matrix_products():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32)
    counter = count_ops(lambda: layer(x).sum().backward())
    # forward x W^T (8x32 by 32x16), backward dW = g^T x; no dx since x needs no gradient
    assert sum(counter.flops.values()) == 2 * (2 * 8 * 32 * 16)
    assert counter.ops["aten.addmm"] == 1
