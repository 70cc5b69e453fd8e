"""Checkpoint files and RNG streams.

A checkpoint is written to a temporary file in the same folder, fsynced, renamed over the target
and the folder fsynced, so ``last.pt`` is always either the previous complete checkpoint or the
new complete one; a crash mid-write leaves at most a stray ``.last.pt.*.tmp`` that is never read
and is removed by the next successful write. Reading refuses files that are cut short or are not
checkpoints with a :class:`CheckpointError` that says which file and what to do.

Checkpoints are pickles (numpy/python RNG states, the config): load only files you trust.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINING_KEYS = ("loss", "optimizer", "updates", "frames", "config")
"""What a checkpoint written by the training loop always holds."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with what to do instead."""


def env_generator(env) -> np.random.Generator | None:
    """The numpy generator behind the embedded env's reset noise, or ``None`` for other envs.

    Reads ``MujocoBatchedEnv._rng`` (this project's own env class, which has no public accessor
    yet); the attribute is pinned by ``tests/test_resume_state.py``. Isaac Lab envs draw their
    reset noise from torch's generators, which :func:`rng_state` saves anyway.
    """
    base = getattr(env, "base_env", env)
    generator = getattr(base, "_rng", None)
    return generator if isinstance(generator, np.random.Generator) else None


def rng_state(env=None) -> dict[str, Any]:
    """Every RNG the run draws from: torch CPU/CUDA, numpy, python, and ``env``'s own generator."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = env_generator(env) if env is not None else None
    if generator is not None:
        state["env"] = generator.bit_generator.state
    return state


def set_rng_state(state: dict[str, Any], env=None) -> None:
    """Restore what :func:`rng_state` saved (the env's generator only when both have one)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = env_generator(env) if env is not None else None
    if generator is not None and "env" in state:
        generator.bit_generator.state = state["env"]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` so that a crash never leaves a half-written file there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    # Leftovers of writes that a SIGKILL interrupted (this process is the only writer).
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse incomplete or foreign files.

    ``required`` names the keys the caller needs (e.g. :data:`TRAINING_KEYS`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; check the resume= path.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(
            f"{path} is not a complete checkpoint ({type(error).__name__}: {error}). It was cut "
            "short or is another kind of file; point resume= at an earlier checkpoint."
        ) from error
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (missing {', '.join(missing)}); point resume= at "
            "a file written by train_dreamer.py (<logdir>/checkpoints/last.pt)."
        )
    return state
