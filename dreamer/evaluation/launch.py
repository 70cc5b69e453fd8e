"""Start a process whose environment is set before its interpreter starts.

``LD_LIBRARY_PATH`` is read by the dynamic loader when the process is exec'd, and the CUDA and
Vulkan/GLX variables are read when the first library that uses them loads; setting them from
Python inside the child (after ``multiprocessing`` has already imported the parent's main
module, and with it torch) is too late for the loader. The variables are therefore placed in
this process's environment just for the ``start()`` call, which exec's the spawned interpreter
with them, and restored right after. Nothing heavy may be imported by this module: the spawned
child unpickles its target by importing the target's module.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# Two threads starting workers at once would see each other's variables.
_ENV_LOCK = threading.Lock()


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) with mode 0o700, as ``XDG_RUNTIME_DIR`` requires.

    An existing directory owned by another user is rejected: the runtime dir holds sockets
    that only its owner may reach.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(
            f"eval.xdg_runtime_dir={path} belongs to another user; point it at a directory of "
            f"your own, e.g. /tmp/xdg-{os.getuid()}."
        )
    path.chmod(0o700)  # mkdir's mode is masked by the umask
    return path


@contextmanager
def environment(updates: Mapping[str, str]) -> Iterator[None]:
    """Set ``updates`` in ``os.environ`` for the duration of the block, then restore."""
    saved = {key: os.environ.get(key) for key in updates}
    with _ENV_LOCK:
        os.environ.update(updates)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def start_process(
    target: Callable, args: tuple, env: Mapping[str, str], name: str
) -> mp.process.BaseProcess:
    """Spawn ``target(*args)`` in a fresh interpreter started with ``env`` added."""
    process = mp.get_context("spawn").Process(target=target, args=args, name=name, daemon=True)
    with environment(env):
        process.start()
    return process


def exec_environment(keys: tuple[str, ...]) -> dict[str, str | None]:
    """The values of ``keys`` this process was exec'd with (``/proc/self/environ`` on Linux).

    Unlike ``os.environ`` this cannot be changed after start, so it shows what the dynamic
    loader and the first CUDA/Vulkan call saw.
    """
    try:
        raw = Path("/proc/self/environ").read_bytes()
        initial = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
    except OSError:
        initial = dict(os.environ)
    return {key: initial.get(key) for key in keys}
