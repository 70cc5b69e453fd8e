"""Checks of the NVIDIA driver, its GL/EGL/Vulkan userspace and the runtime dir.

Each check is a function of a :class:`~dreamer.doctor.system.System` returning one
:class:`~dreamer.doctor.system.CheckResult`; the render checks live in ``render.py``.
"""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from dreamer.doctor.system import FAIL, PASS, SKIP, WARN, CheckResult, CommandResult, System

NVIDIA_SMI = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
# GLVND's EGL loader reads these folders when __EGL_VENDOR_LIBRARY_FILENAMES/DIRS are unset.
EGL_VENDOR_DIRS = ["/etc/glvnd/egl_vendor.d", "/usr/share/glvnd/egl_vendor.d"]
# The Vulkan loader's system folders when VK_DRIVER_FILES/VK_ICD_FILENAMES are unset.
VULKAN_ICD_DIRS = ["/etc/vulkan/icd.d", "/usr/share/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"]
_VERSION_IN_NAME = re.compile(r"\.so\.(\d+\.\d+(?:\.\d+)?)$")

CONTAINER_GRAPHICS_FIX = (
    "in a container, add `-e NVIDIA_DRIVER_CAPABILITIES=all` (the NVIDIA Container Toolkit "
    "mounts the GL/EGL/Vulkan files only with the `graphics` capability)"
)


def driver_version(system: System) -> tuple[str | None, CommandResult]:
    """The NVIDIA driver version ``nvidia-smi`` reports (``None`` when it does not answer)."""
    result = system.run(NVIDIA_SMI, 30.0, None)
    versions = sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})
    if result.returncode != 0 or not versions:
        return None, result
    return versions[0], result


def _gl_package_hint(version: str | None) -> str:
    major = version.split(".")[0] if version else "<driver major>"
    return f"`apt install libnvidia-gl-{major}`"


def check_driver(system: System) -> CheckResult:
    """The kernel driver answers ``nvidia-smi`` with a version."""
    version, result = driver_version(system)
    name = "NVIDIA driver"
    if version is not None:
        gpus = len([line for line in result.stdout.splitlines() if line.strip()])
        return CheckResult(name, PASS, f"driver {version} ({gpus} GPU{'s' * (gpus != 1)})")
    output = (result.stderr + result.stdout).strip()
    if result.returncode == 127:
        return CheckResult(
            name,
            FAIL,
            "nvidia-smi not found: no NVIDIA driver visible",
            "Install the NVIDIA driver on the host; in a container, start it with `--gpus all` "
            "(NVIDIA Container Toolkit).",
        )
    if "version mismatch" in output.lower():
        return CheckResult(
            name,
            FAIL,
            "nvidia-smi: driver/library version mismatch",
            "The loaded kernel module is older than the installed driver libraries (driver "
            "upgraded without reboot): reboot, or unload and reload the nvidia kernel modules.",
        )
    first_line = output.splitlines()[0] if output else f"exit code {result.returncode}"
    return CheckResult(
        name,
        FAIL,
        f"nvidia-smi failed: {first_line}",
        "Check that the GPU is visible to this machine/container (`nvidia-smi`, `--gpus all`).",
    )


def library_index(system: System) -> dict[str, str]:
    """Shared-library file name -> path, from ``LD_LIBRARY_PATH`` folders first, then ``ldconfig -p``."""
    found: dict[str, str] = {}
    for folder in system.env_list("LD_LIBRARY_PATH"):
        inside = system.path(folder)
        if inside.is_dir():
            for lib in sorted(inside.glob("*.so*")):
                found.setdefault(lib.name, f"{folder.rstrip('/')}/{lib.name}")
    result = system.run(["ldconfig", "-p"], 30.0, None)
    if result.returncode == 127:  # not on a non-root PATH
        result = system.run(["/sbin/ldconfig", "-p"], 30.0, None)
    for line in result.stdout.splitlines():
        if "=>" in line:
            path = line.split("=>", 1)[1].strip()
            found.setdefault(Path(path).name, path)
    return found


def _find(index: dict[str, str], prefix: str) -> list[str]:
    return [path for name, path in sorted(index.items()) if name.startswith(prefix + ".so")]


def library_version(system: System, path: str) -> str | None:
    """The driver version in a library's file name, following its symlinks inside ``root``."""
    inside = system.path(path)
    names = [inside.resolve().name if inside.exists() else "", Path(path).name]
    for name in names:
        match = _VERSION_IN_NAME.search(name)
        if match:
            return match.group(1)
    return None


def check_egl_libraries(system: System) -> CheckResult:
    """NVIDIA's EGL vendor library and its core are loadable (headless GPU rendering needs both)."""
    index = library_index(system)
    wanted = ["libEGL_nvidia", "libnvidia-eglcore"]
    missing = [lib for lib in wanted if not _find(index, lib)]
    if not missing:
        return CheckResult("EGL libraries", PASS, ", ".join(_find(index, lib)[0] for lib in wanted))
    version, _ = driver_version(system)
    return CheckResult(
        "EGL libraries",
        FAIL,
        f"not found by ldconfig or in LD_LIBRARY_PATH: {', '.join(missing)}",
        f"Install the NVIDIA GL libraries matching the driver (Debian/Ubuntu: "
        f"{_gl_package_hint(version)}); {CONTAINER_GRAPHICS_FIX}; or add the folder holding "
        "them to LD_LIBRARY_PATH.",
    )


def check_glx_library(system: System) -> CheckResult:
    """NVIDIA's GLX library, which X displays and NVIDIA's Vulkan driver load."""
    paths = _find(library_index(system), "libGLX_nvidia")
    if paths:
        return CheckResult("GLX library", PASS, paths[0])
    version, _ = driver_version(system)
    return CheckResult(
        "GLX library",
        WARN,
        "libGLX_nvidia not found (needed by Vulkan/Isaac Sim and X displays, not by EGL)",
        f"Install the NVIDIA GL libraries ({_gl_package_hint(version)}); {CONTAINER_GRAPHICS_FIX}.",
    )


def _icd_files(system: System, listed: list[str], default_dirs: list[str]) -> list[str]:
    """JSON files named by an env list (files or folders) or else found in ``default_dirs``."""
    files: list[str] = []
    for entry in listed or default_dirs:
        inside = system.path(entry)
        if inside.is_dir():
            files += [f"{entry.rstrip('/')}/{p.name}" for p in sorted(inside.glob("*.json"))]
        elif listed:
            files.append(entry)  # a named file: reported missing below if it is absent
    return files


def _read_icd(system: System, path: str) -> tuple[str | None, str]:
    """``(library_path, problem)`` of a GLVND/Vulkan ICD json file."""
    inside = system.path(path)
    if not inside.is_file():
        return None, f"{path} does not exist"
    try:
        library = json.loads(inside.read_text())["ICD"]["library_path"]
    except (ValueError, KeyError, TypeError):
        return None, f"{path} has no ICD.library_path"
    if library.startswith("/") and not system.path(library).exists():
        return None, f"{path} points at missing {library}"
    return library, ""


def _vendor_check(
    system: System, name: str, files: list[str], fail_status: str, fix: str
) -> CheckResult:
    nvidia, others, problems = [], [], []
    for path in files:
        library, problem = _read_icd(system, path)
        if library is None:
            problems.append(problem)
        elif "nvidia" in library.lower():
            nvidia.append(f"{path} -> {library}")
        else:
            others.append(f"{path} -> {library}")
    if nvidia:
        return CheckResult(name, PASS, "; ".join(nvidia))
    seen = others + problems
    detail = "no NVIDIA entry" + (f" (found: {'; '.join(seen)})" if seen else " (no files)")
    return CheckResult(name, fail_status, detail, fix)


def check_egl_vendor_file(system: System) -> CheckResult:
    """A GLVND EGL vendor json names libEGL_nvidia, where GLVND will look for it."""
    listed = system.env_list("__EGL_VENDOR_LIBRARY_FILENAMES")
    dirs = system.env_list("__EGL_VENDOR_LIBRARY_DIRS") or EGL_VENDOR_DIRS
    files = _icd_files(system, listed, [] if listed else dirs)
    where = "__EGL_VENDOR_LIBRARY_FILENAMES" if listed else ":".join(dirs)
    return _vendor_check(
        system,
        "EGL vendor file",
        files,
        FAIL,
        f"GLVND looked in {where}. Create /usr/share/glvnd/egl_vendor.d/10_nvidia.json with "
        '{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}} '
        "or point __EGL_VENDOR_LIBRARY_FILENAMES at such a file; " + CONTAINER_GRAPHICS_FIX + ".",
    )


def check_version_match(system: System) -> CheckResult:
    """The GL userspace libraries come from the same driver release as the kernel driver."""
    name = "driver/userspace versions"
    version, _ = driver_version(system)
    if version is None:
        return CheckResult(name, SKIP, "no driver version (see NVIDIA driver)")
    index = library_index(system)
    seen = {}
    for lib in ["libnvidia-eglcore", "libGLX_nvidia"]:
        for path in _find(index, lib):
            lib_version = library_version(system, path)
            if lib_version:
                seen[lib] = lib_version
                break
    if not seen:
        return CheckResult(name, SKIP, "no versioned NVIDIA GL library found (see EGL libraries)")
    wrong = {lib: v for lib, v in seen.items() if v != version}
    listed = ", ".join(f"{lib} {v}" for lib, v in seen.items())
    if not wrong:
        return CheckResult(name, PASS, f"driver {version}; {listed}")
    return CheckResult(
        name,
        FAIL,
        f"driver {version} but " + ", ".join(f"{lib} {v}" for lib, v in wrong.items()),
        "The GL libraries come from another driver release than the kernel driver. In a "
        "container, remove the driver libraries baked into the image (e.g. `apt remove "
        "'libnvidia-gl-*'`) and let the NVIDIA Container Toolkit mount the host's; on a host, "
        f"install the libraries for {version} ({_gl_package_hint(version)}) or reboot after a "
        "driver upgrade.",
    )


def check_vulkan_icd(system: System) -> CheckResult:
    """A Vulkan ICD json names NVIDIA's driver (Isaac Sim's RTX renderer runs on Vulkan)."""
    listed = system.env_list("VK_DRIVER_FILES") or system.env_list("VK_ICD_FILENAMES")
    files = _icd_files(system, listed, VULKAN_ICD_DIRS) + _icd_files(
        system, system.env_list("VK_ADD_DRIVER_FILES"), []
    )
    return _vendor_check(
        system,
        "Vulkan ICD file",
        files,
        WARN,
        "Needed by Isaac Sim rendering: point VK_ICD_FILENAMES at the driver's nvidia_icd.json, "
        "or create /etc/vulkan/icd.d/nvidia_icd.json whose ICD.library_path is "
        '"libGLX_nvidia.so.0"; ' + CONTAINER_GRAPHICS_FIX + ".",
    )


def check_vulkaninfo(system: System) -> CheckResult:
    """``vulkaninfo --summary`` lists an NVIDIA GPU."""
    name = "vulkaninfo"
    result = system.run(["vulkaninfo", "--summary"], 60.0, None)
    if result.returncode == 127:
        return CheckResult(
            name, SKIP, "vulkaninfo not on PATH", "Install vulkan-tools to run this check."
        )
    devices = re.findall(r"deviceName\s*=\s*(.+)", result.stdout)
    if any("nvidia" in device.lower() for device in devices):
        return CheckResult(name, PASS, ", ".join(d.strip() for d in devices))
    if result.returncode != 0 or result.timed_out:
        lines = (result.stderr or result.stdout).strip().splitlines()
        detail = "timed out" if result.timed_out else (lines[-1] if lines else "failed")
    else:
        detail = "no NVIDIA GPU among " + (", ".join(d.strip() for d in devices) or "no devices")
    return CheckResult(
        name,
        WARN,
        detail,
        "Vulkan does not reach the GPU: fix the Vulkan ICD and GLX library rows first "
        "(the ICD loads libGLX_nvidia).",
    )


def check_xdg_runtime_dir(system: System) -> CheckResult:
    """``XDG_RUNTIME_DIR`` is set, exists, belongs to this user and has mode 700."""
    name = "XDG_RUNTIME_DIR"
    folder = system.environ.get("XDG_RUNTIME_DIR", "")
    create = f'mkdir -p -m 700 "{folder or "/tmp/runtime-$(id -u)"}"'
    if not folder:
        return CheckResult(
            name,
            WARN,
            "not set (Isaac Sim and Vulkan WSI complain without it)",
            f'export XDG_RUNTIME_DIR="/tmp/runtime-$(id -u)" && {create}',
        )
    inside = system.path(folder)
    if not inside.is_dir():
        return CheckResult(name, WARN, f"{folder} does not exist", create)
    info = inside.stat()
    if info.st_uid != system.uid:
        return CheckResult(
            name,
            WARN,
            f"{folder} belongs to uid {info.st_uid}, not {system.uid}",
            f'chown "$(id -u)" "{folder}", or use a folder of your own: '
            'export XDG_RUNTIME_DIR="/tmp/runtime-$(id -u)"',
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        return CheckResult(
            name, WARN, f"{folder} has mode {mode:o}, not 700", f'chmod 700 "{folder}"'
        )
    return CheckResult(name, PASS, f"{folder} (uid {system.uid}, mode 700)")
