"""The kernels one step of the RSSM's loops launches (bench/step_kernels.py), pinned.

The filter's 64 steps and the dream's 15 are chains of small dependent kernels on a GPU, so one
more kernel a step is 64 (or 15) more in the update's critical path, forward or backward
(docs/benchmarks.md). Counted with Triton's interpreter on a CPU (in a subprocess: the
interpreter must be on before Triton is imported): the Triton launches and the kernel-launching
ATen ops per step.
"""

import pytest
from conftest import ROOT, interpreted_outcomes

pytest.importorskip("triton")

FILTER_MATMULS = 7  # belief, state, shared-features, belief-block, gates, posterior's two


def _per_step(*arguments: str) -> dict:
    return interpreted_outcomes(ROOT / "bench" / "step_kernels.py", "--json", *arguments)


def _products(per: dict) -> float:
    return sum(
        v
        for k, v in per.items()
        if k.removeprefix("beside ").split(".")[0] in ("mm", "bmm", "addmm")
    )


def _beside(per: dict) -> dict:
    """The kernels a GPU runs on the belief branch's stream, beside the filter's chain."""
    return {k: v for k, v in per.items() if k.startswith("beside ")}


def test_a_bf16_filter_step_is_12_kernels_each_way_2_beside_the_chain():
    counts = _per_step("--loop", "filter")
    forward, backward = counts["forward"], counts["backward"]
    assert sum(forward.values()) == 12, forward
    assert sum(backward.values()) == 12, backward
    # The GRU's belief and state projections' norms as one kernel, the two others on their own.
    assert forward["triton _norm_silu_forward"] == backward["triton _norm_silu_backward"] == 2
    assert forward["triton _norm_silu_pair_forward"] == 1
    assert backward["triton _norm_silu_pair_backward"] == 1
    for phase, per in counts.items():
        kind = phase.split("ward")[0]
        assert per[f"triton _gru_{kind}ward_kernel"] == 1
        assert per[f"triton _sample_{kind}ward_kernel"] == 1
        assert _products(per) == FILTER_MATMULS, per  # in cuBLAS, bf16
    # The belief projection's and the block-diagonal layer's products (and, backward, their
    # input gradients) run beside the chain: 10 kernels a step in the chain each way.
    assert _beside(forward) == {
        "beside addmm.default bfloat16": 1,
        "beside bmm.default bfloat16": 1,
    }
    assert _beside(backward) == {"beside mm.default bfloat16": 1, "beside bmm.out bfloat16": 1}


def test_a_float32_filter_step_is_12_triton_kernels_each_way_2_beside_the_chain():
    for phase, per in _per_step("--loop", "filter", "--fp32").items():
        assert per["triton _skinny_matmul"] == FILTER_MATMULS - 2, (phase, per)
        assert _beside(per) == {"beside triton _skinny_matmul": 2}, (phase, per)
        assert sum(per.values()) == 12, (phase, per)
        assert all(name.removeprefix("beside ").startswith("triton ") for name in per), per


def test_a_bf16_dream_step_is_24_kernels_forward_and_22_backward_4_beside_the_chain():
    counts = _per_step("--loop", "dream")
    forward, backward = counts["forward"], counts["backward"]
    assert sum(forward.values()) == 24, forward
    assert sum(backward.values()) == 22, backward
    # The GRU's six products (four linear, two block-linear), the prior head's three and the
    # actor's three, each way; the two noises (the actor's normal, the latent's exponential
    # race) drawn at every step.
    assert _products(forward) == _products(backward) == 12, counts
    assert forward["normal_.default bfloat16"] == forward["exponential_.default float32"] == 1
    # Beside the chain: the next belief's two products, as in the filter, and then the state
    # projection's product and the two projections' norms (beside the actor): a chain of 20
    # kernels forward and 18 backward.
    assert _beside(forward) == {
        "beside addmm.default bfloat16": 2,
        "beside bmm.default bfloat16": 1,
        "beside triton _norm_silu_pair_forward": 1,
    }
    assert _beside(backward) == {
        "beside mm.default bfloat16": 2,
        "beside bmm.out bfloat16": 1,
        "beside triton _norm_silu_pair_backward": 1,
    }
    for name in ("gru", "sample", "action"):
        assert forward[f"triton _{name}_forward_kernel"] == 1
        assert backward[f"triton _{name}_backward_kernel"] == 1
