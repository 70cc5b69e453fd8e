"""Run under ``TRITON_INTERPRET=1`` by tests/test_fused_norm.py: the kernel against torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer.world_model.fused_norm import rms_norm_silu, rms_norm_silu_pair


def reference(x, weight, eps):
    return F.silu(F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps)).to(x.dtype)


def check(width: int, dtype: torch.dtype, shared: bool, rows: int = 15) -> None:
    torch.manual_seed(width)
    x = (torch.randn(rows, 1, width) * 3).to(dtype).requires_grad_()
    weight = (torch.rand(width) + 0.5).requires_grad_()
    grad_out = torch.randn(rows, 1, width).to(dtype)
    expected = reference(x, weight, 1e-4)
    expected_x, expected_w = torch.autograd.grad(expected, (x, weight), grad_out)
    buffer = torch.zeros(width) if shared else None
    got = rms_norm_silu(x, weight, 1e-4, buffer)
    got_x, got_w = torch.autograd.grad(got, (x, weight), grad_out, allow_unused=True)
    if shared:
        assert got_w is None, "with a shared buffer the scale's gradient goes to the buffer"
        got_w = buffer
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.float(), expected.float(), **tol)
    torch.testing.assert_close(got_x.float(), expected_x.float(), **tol)
    scale = float(expected_w.abs().max())
    torch.testing.assert_close(got_w.float(), expected_w.float(), rtol=0, atol=tol["atol"] * scale)


def check_addend(dtype: torch.dtype, blocks: int, rows: int = 9, width: int = 36) -> None:
    """``rms_norm_silu(x, w, eps, addend=a)`` against torch's norm of ``x + a``: values and the
    gradients of ``x``, ``a`` and the scale. ``blocks == 1``: ``a`` is ``[rows, width]``, every
    other row of a wider tensor; else the transpose of a block-major ``[blocks, rows, width /
    blocks]``."""
    torch.manual_seed(blocks)
    x = (torch.randn(rows, width) * 2).to(dtype).requires_grad_()
    if blocks == 1:
        source = (torch.randn(rows, 2, width) * 2).to(dtype).requires_grad_()
        addend = source[:, 1]
    else:
        source = (torch.randn(blocks, rows, width // blocks) * 2).to(dtype).requires_grad_()
        addend = source.transpose(0, 1)
    weight = (torch.rand(width) + 0.5).requires_grad_()
    grad_out = torch.randn(rows, width).to(dtype)
    summed = (x.reshape(addend.shape) + addend).reshape(rows, width)
    expected = reference(summed, weight, 1e-4)
    expected_grads = torch.autograd.grad(expected, (x, source, weight), grad_out)
    got = rms_norm_silu(x, weight, 1e-4, addend=addend)
    got_grads = torch.autograd.grad(got, (x, source, weight), grad_out)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(got.float(), expected.float(), **tol)
    for name, g, e in zip(("x", "addend", "scale"), got_grads, expected_grads, strict=True):
        scale = 1.0 if name != "scale" else float(e.abs().max())
        atol = tol["atol"] * scale
        torch.testing.assert_close(g.float(), e.float(), rtol=tol["rtol"], atol=atol, msg=name)


def check_pair(dtype: torch.dtype, shared: bool, rows: int, widths=(12, 20)) -> None:
    """``rms_norm_silu_pair`` into adjacent columns of one buffer (as the GRU's features) against
    two torch norms: values, the inputs' gradients, and the scales' (returned, or added to
    ``shared`` buffers), each norm with its own eps."""
    torch.manual_seed(rows)
    xs = [(torch.randn(rows, w) * 3).to(dtype).requires_grad_() for w in widths]
    weights = [(torch.rand(w) + 0.5).requires_grad_() for w in widths]
    eps = (1e-4, 1e-3)
    grads_out = [torch.randn(rows, w).to(dtype) for w in widths]
    expected = [reference(x, w, e) for x, w, e in zip(xs, weights, eps, strict=True)]
    expected_grads = torch.autograd.grad(expected, [*xs, *weights], grads_out)
    features = torch.full((rows, sum(widths) + 5), float("nan"), dtype=dtype)
    outs = [features[:, : widths[0]], features[:, widths[0] : sum(widths)]]
    buffers = tuple(torch.zeros(w) for w in widths) if shared else None
    got = rms_norm_silu_pair(xs[0], weights[0], eps[0], outs[0], xs[1], weights[1], eps[1],
                             outs[1], buffers)  # fmt: skip
    assert all(g.data_ptr() == o.data_ptr() for g, o in zip(got, outs, strict=True))
    assert features[:, sum(widths) :].isnan().all(), "the columns past both are left alone"
    got_grads = list(torch.autograd.grad(got, [*xs, *weights], grads_out, allow_unused=True))
    if shared:
        assert got_grads[2] is None and got_grads[3] is None
        got_grads[2:] = buffers
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.float(), e.float(), **tol)
    names = ("x1", "x2", "scale 1", "scale 2")
    for name, g, e in zip(names, got_grads, expected_grads, strict=True):
        scale = 1.0 if name.startswith("x") else float(e.abs().max())
        atol = tol["atol"] * scale
        torch.testing.assert_close(g.float(), e.float(), rtol=tol["rtol"], atol=atol, msg=name)


def check_pair_held_out() -> None:
    """Scales that want no gradient (held out of the graph) get none; the inputs still do."""
    xs = [torch.randn(6, w, requires_grad=True) for w in (12, 20)]
    weights = [torch.rand(w) + 0.5 for w in (12, 20)]
    outs = [torch.empty(6, w) for w in (12, 20)]
    got = rms_norm_silu_pair(xs[0], weights[0], 1e-4, outs[0], xs[1], weights[1], 1e-4, outs[1])
    got_grads = torch.autograd.grad(sum(g.sum() for g in got), xs)
    expected = [reference(x, w, 1e-4) for x, w in zip(xs, weights, strict=True)]
    expected_grads = torch.autograd.grad(sum(e.sum() for e in expected), xs)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


if __name__ == "__main__":
    for width in (512, 37):
        for dtype in (torch.float32, torch.bfloat16):
            for shared in (False, True):
                check(width, dtype, shared)
    # A scale that wants no gradient (held out of the graph) gets none, the input still does.
    x = torch.randn(4, 37, requires_grad=True)
    held_out = torch.rand(37) + 0.5
    (grad_x,) = torch.autograd.grad(rms_norm_silu(x, held_out, 1e-4).sum(), x)
    torch.testing.assert_close(
        grad_x, torch.autograd.grad(reference(x, held_out, 1e-4).sum(), x)[0]
    )
    # Several rows per backward program, the last program's tile cut short (257 rows: tiles of
    # 4, the last holding one row); the imagination's shape (tiles of 8 rows of 512).
    check(37, torch.float32, True, rows=257)
    check(512, torch.float32, True, rows=1024)
    check(512, torch.bfloat16, False, rows=1000)
    # A gradient that is a column slice of a wider one (the output concatenated with another) is
    # read with its row stride.
    x = torch.randn(6, 37, requires_grad=True)
    weight = torch.rand(37) + 0.5
    wide = torch.randn(6, 50)
    got = torch.cat([rms_norm_silu(x, weight, 1e-4), torch.zeros(6, 13)], -1)
    (grad_x,) = torch.autograd.grad(got, x, wide)
    (expected_x,) = torch.autograd.grad(reference(x, weight, 1e-4), x, wide[:, :37])
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-5, atol=1e-5)
    # An addend added by the kernel: a row slice of a wider tensor (the filter's embedding
    # term), and a block-major layer output read through its transpose (the GRU's hidden sum).
    for dtype in (torch.float32, torch.bfloat16):
        check_addend(dtype, blocks=1)
        check_addend(dtype, blocks=4)
    print("fused norm kernel OK")
    # Two norms of the same rows in one kernel each way: the filter's 16 rows, the dream's
    # tiles of several rows, the last tile cut short.
    for dtype in (torch.float32, torch.bfloat16):
        for shared in (False, True):
            check_pair(dtype, shared, rows=16)
    check_pair(torch.float32, True, rows=257, widths=(37, 512))
    check_pair_held_out()
