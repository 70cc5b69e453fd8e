"""Shared fixtures: the composed Hydra config and small agents on the toy env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Tiny models on a 2-core machine: torch's intra-op threads cost more than they give (an update
# ran 10x slower with the default under load, measured 2026-11-23). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from dreamer.config import load_config  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that imports this repo: ``extra`` set, the repo root first
    on ``PYTHONPATH`` and the caller's path kept (packages may come from it, as on the GPU
    machine, where replacing it made the subprocess miss torchrl)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **extra, "PYTHONPATH": path}


def check_cases(cases: dict) -> dict[str, str]:
    """Run each ``name: (check, args)`` kernel case under Triton's interpreter; each outcome is
    ``"ok"`` or its traceback. A test file that is also a script prints this as JSON, and its
    tests read it through :func:`interpreted_outcomes`."""
    import traceback

    assert os.environ.get("TRITON_INTERPRET") == "1"  # set before this process imported triton
    results = {}
    for name, (check, args) in cases.items():
        try:
            check(*args)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    return results


def interpreted_outcomes(script: str | Path, *arguments: str) -> dict:
    """Run ``script`` with ``arguments`` (it prints JSON last, e.g. :func:`check_cases`') with
    ``TRITON_INTERPRET=1``, in a subprocess: the switch must be set before triton is imported,
    and pytest's process has."""
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, str(script), *arguments],
        env=subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def execute_notebook(name: str) -> list:
    """Run ``notebooks/<name>`` top to bottom (a cell error raises); return its code outputs."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit notebooks stripped"
    )
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


@pytest.fixture
def smoke_cfg():
    """The smoke profile on CPU, compile off."""
    cfg = load_config("profile=smoke")
    cfg.compile.enabled = False
    return cfg


@pytest.fixture
def toy_agent(smoke_cfg):
    """An agent on a 6-env toy env with the acting-state primer."""
    from toy_env import ToyBatchedEnv

    from dreamer.agent import build_agent
    from dreamer.env.factory import add_episode_stats
    from dreamer.policy.acting import add_acting_state
    from dreamer.world_model.networks import model_size_from_config

    env = add_acting_state(
        add_episode_stats(ToyBatchedEnv(6)), model_size_from_config(smoke_cfg.model), 2
    )
    return env, build_agent(smoke_cfg, env)


@pytest.fixture(scope="module")
def interpreted(request) -> dict[str, str]:
    """The outcomes of the requesting test file's kernel cases, run as a script under Triton's
    interpreter (:func:`interpreted_outcomes`); once per file."""
    pytest.importorskip("triton")
    return interpreted_outcomes(request.module.__file__)
