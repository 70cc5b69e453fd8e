"""The fused RMS norm + SiLU kernel (dreamer.world_model.fused_norm) computes TorchRL's maths.

The kernel runs on a CPU through Triton's interpreter (``TRITON_INTERPRET=1``, set in a
subprocess because it must be set before triton is imported), where the RSSM then uses it
exactly as on a GPU; the filter's and imagination's tests are re-run that way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import subprocess_env
from torch import nn
from torchrl.modules.models.model_based import DreamerV3MLP

from dreamer.world_model.rssm_parts import torchrl_rms_norm_eps

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")


def interpreted(*command: str) -> subprocess.CompletedProcess:
    env = subprocess_env(TRITON_INTERPRET="1")
    return subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_torchrl_norm_is_what_the_kernel_computes():
    """Pins the private TorchRL norm the kernel replaces: its eps and its maths."""
    mlp = DreamerV3MLP(in_features=6, out_features=3, num_cells=16, depth=1)
    norms = [m for m in mlp.modules() if torchrl_rms_norm_eps(m) is not None]
    assert norms, "TorchRL's DreamerV3 MLP no longer uses the norm this project fuses"
    norm = norms[0]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 16) * 3
    expected = F.rms_norm(x, (16,), norm.weight, torchrl_rms_norm_eps(norm))
    torch.testing.assert_close(norm(x), expected)
    assert torchrl_rms_norm_eps(nn.LayerNorm(4)) is None


def test_kernel_matches_torch_forward_and_backward():
    result = interpreted("tests/fused_norm_check.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fused norm kernel OK" in result.stdout


def test_filter_and_imagination_with_the_fused_norm():
    """The filter, imagination and deferred-gradient tests pass with every RSSM norm fused."""
    result = interpreted(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_fast_filter.py",
        "tests/test_imagine.py",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
