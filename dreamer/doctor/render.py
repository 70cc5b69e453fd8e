"""Render checks: draw a small scene in a child process and look at the pixels."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from dreamer.doctor.checks import driver_version
from dreamer.doctor.system import (
    FAIL,
    PASS,
    SKIP,
    CheckResult,
    CommandResult,
    System,
)

PROBES = str(Path(__file__).with_name("probes.py"))
MUJOCO_TIMEOUT_S = 120.0
# the first Isaac Lab/Newton launch compiles warp kernels (tens of seconds on a CPU)
ISAACLAB_TIMEOUT_S = 300.0
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "lavapipe")
GL_BACKENDS = ("egl", "osmesa")


def _probe_outcome(result: CommandResult, timeout: float) -> tuple[dict | None, str]:
    """The probe's JSON report, or why there is none."""
    if result.timed_out:
        return None, f"hung for more than {timeout:.0f} s"
    if result.returncode < 0:
        try:
            return None, f"crashed with {signal.Signals(-result.returncode).name}"
        except ValueError:
            return None, f"killed by signal {-result.returncode}"
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        errors = (result.stderr or result.stdout).strip().splitlines()
        return None, errors[-1] if errors else f"exit code {result.returncode}"
    try:
        return json.loads(lines[-1]), ""
    except ValueError:
        return None, f"unreadable probe output: {lines[-1][:200]}"


def check_mujoco_render(system: System, backend: str = "egl") -> CheckResult:
    """MuJoCo renders a non-blank image offscreen with ``MUJOCO_GL=backend``, on the GPU if one is present."""
    if backend not in GL_BACKENDS:
        raise ValueError(
            f"MuJoCo headless GL backend must be one of {GL_BACKENDS}, got {backend!r}"
        )
    name = f"MuJoCo render ({backend})"
    # PYOPENGL_PLATFORM must agree with MUJOCO_GL, or MuJoCo refuses to start
    env = {**system.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    result = system.run([system.python, PROBES, "mujoco"], MUJOCO_TIMEOUT_S, env)
    report, problem = _probe_outcome(result, MUJOCO_TIMEOUT_S)
    if backend == "osmesa":
        stack_fix = "MUJOCO_GL=osmesa needs libOSMesa: `apt install libosmesa6`."
    else:
        stack_fix = (
            "MUJOCO_GL=egl needs libEGL plus a GLVND vendor: fix the EGL rows above (on a CPU-only "
            "machine Mesa's 50_mesa.json + libEGL_mesa renders in software); "
            "MUJOCO_EGL_DEVICE_ID picks the GPU."
        )
    if report is None:
        return CheckResult(name, FAIL, problem, stack_fix)
    detail = f"{report['shape'][1]}x{report['shape'][0]} image, {report['colors']} colours, by {report['renderer']}"
    if report["colors"] <= 1:
        return CheckResult(
            name,
            FAIL,
            f"blank image (one colour) by {report['renderer']}",
            "The GL context came up but drew nothing: check the driver/userspace versions row "
            "(a mismatch often does this) and " + stack_fix,
        )
    software = any(tag in report["renderer"].lower() for tag in SOFTWARE_RENDERERS)
    if software and backend == "egl" and driver_version(system)[0] is not None:
        return CheckResult(
            name,
            FAIL,
            f"drawn in software by {report['renderer']} although an NVIDIA driver is present",
            "EGL picked Mesa instead of NVIDIA: fix the EGL libraries/vendor file rows, e.g. "
            "export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
        )
    return CheckResult(name, PASS, detail)


def check_isaaclab_render(system: System) -> CheckResult:
    """Isaac Lab 3 kit-less's camera renderer (Newton's warp ray tracer) draws a non-blank image."""
    name = "Isaac Lab render (Newton warp)"
    if not system.has_module("isaaclab"):
        return CheckResult(name, SKIP, "isaaclab is not importable in this interpreter")
    if not system.has_module("newton"):
        return CheckResult(
            name,
            SKIP,
            "newton is not importable (Isaac Lab 2.x/Isaac Sim renders through RTX: see the "
            "Vulkan rows)",
        )
    result = system.run(
        [system.python, PROBES, "isaaclab"], ISAACLAB_TIMEOUT_S, dict(system.environ)
    )
    report, problem = _probe_outcome(result, ISAACLAB_TIMEOUT_S)
    fix = (
        "Run the probe by hand to see the full error: "
        f"`{system.python} {PROBES} isaaclab`; on a GPU it needs CUDA visible to warp "
        "(check the NVIDIA driver row and CUDA_VISIBLE_DEVICES)."
    )
    if report is None:
        return CheckResult(name, FAIL, problem, fix)
    if report["colors"] <= 1:
        return CheckResult(name, FAIL, f"blank image (one colour) by {report['renderer']}", fix)
    return CheckResult(name, PASS, f"{report['colors']} colours, by {report['renderer']}")
