"""What the doctor's checks read from the machine, behind one replaceable object.

Every check takes a :class:`System`: commands go through ``system.run``, files are looked up under
``system.root`` and variables in ``system.environ``. The real machine is ``System()``; tests pass a
fake directory tree, canned command outputs and their own environment.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass(frozen=True)
class CheckResult:
    """One row of the report. ``fix`` says what to do when the status is not ``pass``.

    ``fail`` means a required piece is broken (the doctor exits non-zero); ``warn`` means an
    optional piece (only some renderers need it) is broken; ``skip`` means it could not be checked.
    """

    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it ended (``returncode`` 127: not found)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False


Runner = Callable[[Sequence[str], float, Mapping[str, str] | None], CommandResult]


def run_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run ``argv`` with a time limit; a missing program or a hang becomes a result, not an error."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except FileNotFoundError:
        return CommandResult(127, stderr=f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return CommandResult(124, stdout=out, timed_out=True)
    return CommandResult(done.returncode, done.stdout, done.stderr)


def module_importable(name: str) -> bool:
    """Whether ``name`` is an importable package (a bare folder of that name does not count).

    Same test as ``dreamer.env.isaaclab_env.isaaclab_available``, for any name, without importing
    that module: the doctor must not need torch, which a broken install may not load.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


@dataclass
class System:
    """The machine as the checks see it (defaults: this machine, this process)."""

    root: Path = Path("/")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    uid: int = field(default_factory=os.getuid)
    run: Runner = run_command
    has_module: Callable[[str], bool] = module_importable
    python: str = sys.executable

    def path(self, absolute: str | Path) -> Path:
        """``absolute`` (a path on the machine) inside ``root``."""
        return self.root / str(absolute).lstrip("/")

    def env_list(self, name: str) -> list[str]:
        """A colon-separated variable as a list (empty when unset)."""
        return [item for item in self.environ.get(name, "").split(":") if item]
