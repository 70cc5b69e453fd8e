#!/usr/bin/env bash
# Create .venv (or $DREAMER_VENV) with this project and its dev tools. Idempotent.
# On a machine without an NVIDIA driver, torch is pinned to the CPU build 2.13.0 so pip does
# not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DREAMER_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "torch>=2.11"
  else
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" || "$VENV/bin/python" -m pip install -q "torch>=2.11" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# ray: collector.backend=ray and its test (about 240 MB, 15 s to install); baselines: rsl_rl's
# PPO for bench/ppo_rsl_rl.py (pulls onnx and onnxscript, about 40 MB, which it never imports)
"$VENV/bin/python" -m pip install -q -e ".[dev,ray,baselines]"
# env.pixels=true on the embedded backend renders with MuJoCo's offscreen OpenGL: OSMesa on CPU
# machines (EGL through the GPU driver, or Mesa's libegl-mesa0, also works). Installed only when
# missing and apt-get can run as root; otherwise say what to install.
if ! ldconfig -p 2>/dev/null | grep libOSMesa >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6; } \
      >/dev/null 2>&1 || echo "warning: apt-get install libosmesa6 failed (needed for env.pixels on CPU)" >&2
  else
    echo "note: env.pixels=true on a CPU needs OSMesa: sudo apt-get install libosmesa6" >&2
  fi
fi
"$VENV/bin/python" -m ipykernel install --user --name dreamer >/dev/null 2>&1 || true
echo "ready: $VENV"
