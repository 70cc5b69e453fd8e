"""Every Triton kernel that training launches compiles for the H100 (sm_90), checked on a CPU.

The other kernel tests run through Triton's interpreter, which never calls Triton's compiler:
a kernel the compiler rejects passes them and fails at a GPU user's first update.
``bench/compile_kernels.py`` records the launches of a float32 update, a bf16 update and an
acting step of the 12M agent at 16x64 (H=15) and compiles each to a cubin for sm_90.
"""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, subprocess_env

pytest.importorskip("triton")
sys.path.insert(0, str(ROOT / "bench"))
from compile_kernels import compile_all  # noqa: E402

# The kernels (module.name) that a 12M update or acting step launches: all of them, each once at least.
KERNELS = {
    "fused_ops._gru_forward_kernel",
    "fused_ops._gru_backward_kernel",
    "fused_sample._sample_forward_kernel",
    "fused_sample._sample_backward_kernel",
    "fused_norm._norm_silu_forward",
    "fused_norm._norm_silu_backward",
    "fused_norm._norm_silu_pair_forward",
    "fused_norm._norm_silu_pair_backward",
    "skinny_matmul._skinny_matmul",
    "fused_action._action_forward_kernel",
    "fused_action._action_backward_kernel",
    "lambda_return._dream_forward_kernel",
    "lambda_return._dream_backward_kernel",
    "lambda_return._replay_kernel",
    "flat_optimizer._partial_norms",
    "flat_optimizer._apply_update",
}


def test_the_check_fails_a_kernel_that_only_the_interpreter_runs():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "compile_check_cases.py")],
        env=subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    launches = json.loads(done.stdout.splitlines()[-1])
    for launch in launches:  # imported by module name here, without the interpreter
        launch["module"] = "compile_check_cases"
    results = {r["kernel"]: r for r in compile_all(launches, 90)}
    assert results["compile_check_cases.scale_kernel"]["ok"]
    broken = results["compile_check_cases.big_tile_kernel"]
    assert not broken["ok"] and "shared memory" in broken["error"]


def test_every_kernel_of_a_12m_update_and_acting_step_compiles_for_sm90(tmp_path):
    out = tmp_path / "compiled.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compile_kernels.py"), "--arch", "90"]
        + ["--model", "small12m", "--sizes", "16x64:15", "--json", str(out)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), done.stderr[-3000:]
    results = json.loads(out.read_text())
    failed = {r["kernel"]: r["error"][-800:] for r in results if not r["ok"]}
    assert not failed and done.returncode == 0, failed or done.stdout[-3000:]
    assert {r["kernel"] for r in results} == KERNELS
    # The dream's GRU writes the next belief for six readers, in bf16 among them.
    dream_gru = [
        r["arguments"]
        for r in results
        if r["kernel"] == "fused_ops._gru_forward_kernel" and r["arguments"]["COPIES"][1] == 6
    ]
    assert any(a[:2] == ["tensor", "torch.bfloat16"] for args in dream_gru for a in args.values())
