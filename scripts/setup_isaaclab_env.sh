#!/usr/bin/env bash
# Create a Python 3.12 virtualenv with Isaac Lab 3.0 "kit-less" (Newton physics, no Isaac Sim),
# TorchRL 0.14.1 and this project, for `env.backend=isaaclab`.
#
#   bash scripts/setup_isaaclab_env.sh [VENV_DIR]      (default: .venv-isaaclab)
#
# Why not `pip install isaaclab==3.0.0`: its metadata hard-pins ~50 packages a kit-less run never
# imports (transformers, open3d, pin, omniverseclient, usd-exchange, rsl-rl-lib, imgui-bundle,
# coacd, onnx, ...) and torch==2.11.0. We install isaaclab and newton with --no-deps and list the
# run-time imports ourselves (docs/isaaclab.md has the reasoning and the measured size/time).
#
# torch: PyPI's Linux x86_64 cp312 wheels are all CUDA builds (there is no CPU-only torch for
# Linux on PyPI; the CPU builds live on download.pytorch.org, which this project cannot assume).
# isaaclab pins 2.11.0; we use torch 2.14.1 instead: the newest release under this machine's pip
# cap, it loads torchrl's compiled extension and runs Isaac Lab 3.0 kit-less (checked: the real
# tests in tests/isaac_backend/), and the CUDA wheels it depends on lie on these machines' local index,
# so only torch itself (555 MB) and triton come from PyPI. Override with TORCH_SPEC=...
#
# Idempotent: a marker file in the venv records the package set; re-running with the same set and
# a working import is a no-op.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-.venv-isaaclab}"
case "$VENV" in /*) ;; *) VENV="$REPO_ROOT/$VENV" ;; esac

TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1}"
ISAACLAB_SPEC="isaaclab==3.0.0"
NEWTON_SPEC="newton==1.6.1"
# What a kit-less Isaac-Ant run imports (found by running it), pinned where Isaac Lab/newton pin.
RUNTIME_DEPS=(
  "warp-lang==1.17.0"
  "mujoco~=3.12.0"
  "mujoco-warp~=3.12.0"
  "usd-core>=25.5,<26.9"
  "newton-usd-schemas>=0.5.0"
  "numpy>=2"
  "gymnasium>=1.2.0"
  "hydra-core>=1.3"
  "omegaconf"
  "prettytable>=3.3.0"
  "lazy_loader>=0.4"
  "rich"
  "tqdm>=4.67.1"
  "trimesh>=4.6.8"
  "scipy>=1.11.0"
  "h5py>=3.15.0"
  "filelock"
  "pyyaml"
  "glfw"
  "psutil"
  "packaging"
  "typing-extensions>=4.15.0"
  "Jinja2"
)
RL_DEPS=("torchrl==0.14.1" "tensordict==0.14.3")
# Fallback for this project's own deps if its editable install fails (normally pyproject.toml's
# dependencies and [dev] extra are installed by `pip install -e .[dev]` below).
PROJECT_DEPS=("einops>=0.8" "tensorboard>=2.16" "pytest>=8" "matplotlib>=3.8")

# Re-run when the package set or the project's declared dependencies change.
PYPROJECT_HASH="$(sha256sum "$REPO_ROOT/pyproject.toml" 2>/dev/null | cut -c1-16 || true)"
SPEC_SET="$TORCH_SPEC $ISAACLAB_SPEC $NEWTON_SPEC ${RUNTIME_DEPS[*]} ${RL_DEPS[*]} pyproject:$PYPROJECT_HASH"
MARKER="$VENV/.dreamer-isaaclab-ready"

check_imports() {
  "$VENV/bin/python" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("isaaclab", "isaaclab_tasks", "newton", "warp", "mujoco_warp", "pxr",
                       "torch", "torchrl", "tensordict", "dreamer") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing modules: {missing}")
import torch, torchrl  # noqa: F401  (loads torch's and torchrl's shared libraries)
EOF
}

if [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$SPEC_SET" ]] && check_imports; then
  echo "[setup_isaaclab_env] $VENV is ready (nothing to do)."
  exit 0
fi

find_python312() {
  if [[ -n "${PYTHON312:-}" ]]; then echo "$PYTHON312"; return; fi
  # `command -v` alone is not enough: a pyenv shim exists even where it cannot run 3.12.
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -V >/dev/null 2>&1; then
    command -v python3.12; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    local root
    root="$(pyenv root)"
    local cand
    cand="$(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -n1 || true)"
    if [[ -n "$cand" ]]; then echo "$cand"; return; fi
  fi
  echo "No Python 3.12 found: install one (Isaac Lab 3.0 requires >=3.12,<3.13) or set PYTHON312." >&2
  exit 1
}

# A fresh venv is 6.8 GB (measured 2026-12-07 on the 2-core CPU machine: the nvidia libraries
# 3.2 GB, torch 1.2 GB, triton 0.9 GB, warp 0.4 GB), and pip unpacks each wheel beside it. Say so
# before downloading anything, rather than failing halfway with "No space left on device".
check_free_space() {
  local need_mb=7500 dir free_mb
  dir="$(dirname "$VENV")"
  free_mb="$(df -Pm "$dir" | awk 'NR == 2 {print $4}')"
  if [[ -n "$free_mb" ]] && (( free_mb < need_mb )); then
    echo "[setup_isaaclab_env] $dir has $free_mb MB free; a new $VENV needs about $need_mb MB" \
      "(torch's CUDA build and its nvidia libraries, which PyPI's Linux torch always is)." \
      "Free some space, or give another VENV_DIR (the first argument) on a larger disk." >&2
    exit 1
  fi
}

START=$(date +%s)
PY312="$(find_python312)"
echo "[setup_isaaclab_env] Python: $PY312 -> venv $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  check_free_space
  "$PY312" -m venv "$VENV"
fi
# -q: pip still prints "isaaclab 3.0.0 requires <pkg>, which is not installed" for the pins we
# skip on purpose (see the header); that message is expected and harmless.
PIP=("$VENV/bin/python" -m pip install -q --progress-bar off)
"${PIP[@]}" --upgrade pip setuptools wheel >/dev/null

# torch first, with its own (CUDA library) dependencies so that `import torch` can load.
"${PIP[@]}" "$TORCH_SPEC"
# Isaac Lab and Newton without their dependency pins (see the header).
"${PIP[@]}" --no-deps "$ISAACLAB_SPEC" "$NEWTON_SPEC"
"${PIP[@]}" "${RUNTIME_DEPS[@]}" "${RL_DEPS[@]}" "$TORCH_SPEC"

# This project, editable, with its declared deps and [dev] extra; the pins above already satisfy
# torch/torchrl/tensordict/mujoco, so pip only adds what is missing (einops, tensorboard, ...).
# If the editable build fails (e.g. a file named in pyproject.toml is missing), fall back to a
# .pth entry for the repo root and the deps listed above.
if ! "${PIP[@]}" --no-build-isolation -e "$REPO_ROOT[dev]" "$TORCH_SPEC" "${RL_DEPS[@]}"; then
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$REPO_ROOT" > "$SITE/dreamer_repo_root.pth"
  "${PIP[@]}" "${PROJECT_DEPS[@]}" "$TORCH_SPEC"
  echo "[setup_isaaclab_env] editable install failed; added $REPO_ROOT to the venv via .pth"
fi

check_imports
echo "$SPEC_SET" > "$MARKER"
END=$(date +%s)
echo "[setup_isaaclab_env] done in $((END - START)) s; venv size: $(du -sh "$VENV" | cut -f1)"
echo "[setup_isaaclab_env] activate with: source $VENV/bin/activate"
