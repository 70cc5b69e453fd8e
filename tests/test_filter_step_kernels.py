"""The kernels one filter step launches (bench/filter_step_kernels.py), pinned.

The filter's 64 steps are a chain of small dependent kernels on a GPU, so one more kernel a step
is 64 more in the update's critical path, forward or backward (docs/benchmarks.md). Counted with
Triton's interpreter on a CPU (in a subprocess: the interpreter must be on before Triton is
imported): the Triton launches and the kernel-launching ATen ops per step.
"""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

pytest.importorskip("triton")

MATMULS = 7  # belief, state, shared-features, belief-block, gates, posterior belief and logits


@pytest.fixture(scope="module")
def counts() -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "filter_step_kernels.py"), "--json"],
        env=subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_bf16_filter_step_is_13_kernels_each_way(counts):
    forward, backward = counts["bf16"]["forward"], counts["bf16"]["backward"]
    assert sum(forward.values()) == 13, forward
    assert sum(backward.values()) == 13, backward
    assert forward["triton _norm_silu_forward"] == 4
    assert backward["triton _norm_silu_backward"] == 4
    for phase, per in counts["bf16"].items():
        kind = phase.split("ward")[0]
        assert per[f"triton _gru_{kind}ward_kernel"] == 1
        assert per[f"triton _sample_{kind}ward_kernel"] == 1
        products = sum(v for k, v in per.items() if k.split(".")[0] in ("mm", "bmm", "addmm"))
        assert products == MATMULS, per  # in cuBLAS, bf16


def test_a_float32_filter_step_is_13_triton_kernels_each_way(counts):
    for phase, per in counts["fp32"].items():
        assert per["triton _skinny_matmul"] == MATMULS, (phase, per)
        assert sum(per.values()) == 13, (phase, per)
        assert all(name.startswith("triton ") for name in per), (phase, per)
