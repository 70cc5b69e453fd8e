"""The rendering-stack doctor against fake machines (directory trees + canned command outputs)
and once for real on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from dreamer.doctor import checks, render
from dreamer.doctor.__main__ import main
from dreamer.doctor.report import exit_code, format_report, run_checks
from dreamer.doctor.system import (
    FAIL,
    PASS,
    SKIP,
    WARN,
    CommandResult,
    System,
    module_importable,
)

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "550.54.14"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
PYTHON = "/fake/python"
NOT_FOUND = CommandResult(127, stderr="command not found")
NVIDIA_PROBE = {"shape": [64, 64, 3], "colors": 412, "renderer": "NVIDIA H100 80GB HBM3/PCIe/SSE2"}
VULKANINFO = """Devices:
========
GPU0:
\tapiVersion         = 1.3.277
\tdriverVersion      = 550.54.14
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = NVIDIA H100 80GB HBM3
GPU1:
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 15.0.6, 256 bits)
"""


class FakeRunner:
    """Canned results keyed by program name (``probe:<name>`` for the render probes)."""

    def __init__(self, outputs: dict[str, CommandResult]):
        self.outputs = outputs
        self.calls: list[tuple[list[str], dict | None]] = []

    def __call__(self, argv, timeout, env=None):
        self.calls.append((list(argv), env))
        key = f"probe:{argv[-1]}" if argv[0] == PYTHON else Path(argv[0]).name
        return self.outputs.get(key, NOT_FOUND)


def probe_output(report: dict, noise: str = "") -> CommandResult:
    return CommandResult(0, stdout=noise + json.dumps(report) + "\n")


def ldconfig_output(root: Path) -> CommandResult:
    """``ldconfig -p`` as it lists every library file and soname link in the fake LIBDIR."""
    lines = [f"{len(list((root / LIBDIR[1:]).iterdir()))} libs found in cache `/etc/ld.so.cache'"]
    for lib in sorted((root / LIBDIR[1:]).iterdir()):
        lines.append(f"\t{lib.name} (libc6,x86-64) => {LIBDIR}/{lib.name}")
    return CommandResult(0, stdout="\n".join(lines) + "\n")


def write_json(path: Path, library: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"file_format_version": "1.0.0", "ICD": {"library_path": library}}))


def add_library(root: Path, name: str, version: str, link: str | None = None) -> None:
    """``name.so.version`` with an optional soname symlink (``name.so.0``) as drivers install them."""
    folder = root / LIBDIR[1:]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.so.{version}").write_bytes(b"\x7fELF")
    if link:
        (folder / f"{name}.so.{link}").symlink_to(f"{name}.so.{version}")


def nvidia_tree(root: Path, lib_version: str = DRIVER) -> Path:
    """A machine whose NVIDIA libraries, vendor files and runtime dir are all in order."""
    add_library(root, "libEGL_nvidia", lib_version, link="0")
    add_library(root, "libnvidia-eglcore", lib_version)
    add_library(root, "libGLX_nvidia", lib_version, link="0")
    add_library(root, "libEGL_mesa", "0.0.0", link="0")
    write_json(root / "usr/share/glvnd/egl_vendor.d/10_nvidia.json", "libEGL_nvidia.so.0")
    write_json(root / "usr/share/glvnd/egl_vendor.d/50_mesa.json", "libEGL_mesa.so.0")
    write_json(root / "usr/share/vulkan/icd.d/nvidia_icd.json", "libGLX_nvidia.so.0")
    (root / "run/user/1000").mkdir(parents=True)
    (root / "run/user/1000").chmod(0o700)
    return root


def make_system(
    root: Path, environ: dict | None = None, commands: dict[str, CommandResult] | None = None
) -> System:
    """An NVIDIA machine at ``root``; ``commands`` replace canned results by FakeRunner key."""
    canned = {
        "nvidia-smi": CommandResult(0, stdout=f"{DRIVER}\n{DRIVER}\n"),
        "ldconfig": ldconfig_output(root),
        "vulkaninfo": CommandResult(0, stdout=VULKANINFO),
        "probe:mujoco": probe_output(NVIDIA_PROBE),
    }
    canned.update(commands or {})
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "PATH": "/usr/bin"}
    env.update(environ or {})
    return System(
        root=root,
        environ=env,
        uid=os.getuid(),
        run=FakeRunner(canned),
        has_module=lambda name: False,
        python=PYTHON,
    )


@pytest.fixture
def machine(tmp_path):
    return nvidia_tree(tmp_path)


def by_name(results):
    return {result.name: result for result in results}


def test_matching_nvidia_machine_passes_every_check(machine):
    results = run_checks(make_system(machine))
    statuses = {r.name: r.status for r in results}
    assert statuses.pop("Isaac Lab render (Newton warp)") == SKIP
    assert set(statuses.values()) == {PASS}, statuses
    assert exit_code(results) == 0
    rows = by_name(results)
    assert f"driver {DRIVER} (2 GPUs)" == rows["NVIDIA driver"].detail
    assert "10_nvidia.json -> libEGL_nvidia.so.0" in rows["EGL vendor file"].detail
    assert f"libGLX_nvidia {DRIVER}" in rows["driver/userspace versions"].detail
    assert "NVIDIA H100" in rows["vulkaninfo"].detail
    assert "All required checks pass." in format_report(results)


def test_missing_driver_fails_and_names_the_container_flag(machine):
    system = make_system(machine, commands={"nvidia-smi": NOT_FOUND})
    rows = by_name(run_checks(system))
    assert rows["NVIDIA driver"].status == FAIL
    assert "--gpus all" in rows["NVIDIA driver"].fix
    assert rows["driver/userspace versions"].status == SKIP
    assert exit_code(list(rows.values())) == 1


def test_kernel_and_library_mismatch_from_nvidia_smi_says_reboot(machine):
    smi = CommandResult(18, stdout="Failed to initialize NVML: Driver/library version mismatch\n")
    result = checks.check_driver(make_system(machine, commands={"nvidia-smi": smi}))
    assert result.status == FAIL
    assert "reboot" in result.fix


def test_userspace_libraries_from_another_release_fail_the_version_check(tmp_path):
    system = make_system(nvidia_tree(tmp_path, lib_version="535.104.05"))
    result = checks.check_version_match(system)
    assert result.status == FAIL
    assert f"driver {DRIVER} but libnvidia-eglcore 535.104.05" in result.detail
    assert "libGLX_nvidia 535.104.05" in result.detail
    assert "libnvidia-gl-550" in result.fix and "Container Toolkit" in result.fix


def test_glx_version_is_read_through_its_soname_link(tmp_path):
    """ldconfig lists ``libGLX_nvidia.so.0``; the version is in the file the link points to."""
    root = nvidia_tree(tmp_path)
    (root / LIBDIR[1:] / f"libGLX_nvidia.so.{DRIVER}").rename(
        root / LIBDIR[1:] / "libGLX_nvidia.so.1.2.3"
    )
    (root / LIBDIR[1:] / "libGLX_nvidia.so.0").unlink()
    (root / LIBDIR[1:] / "libGLX_nvidia.so.0").symlink_to("libGLX_nvidia.so.1.2.3")
    system = make_system(root)
    system.run.outputs["ldconfig"] = CommandResult(
        0,
        stdout=f"\tlibGLX_nvidia.so.0 (libc6,x86-64) => {LIBDIR}/libGLX_nvidia.so.0\n"
        f"\tlibnvidia-eglcore.so.{DRIVER} (libc6,x86-64) => {LIBDIR}/libnvidia-eglcore.so.{DRIVER}\n",
    )
    result = checks.check_version_match(system)
    assert result.status == FAIL and "libGLX_nvidia 1.2.3" in result.detail


def test_missing_egl_libraries_fail_with_the_graphics_capability_fix(tmp_path):
    root = tmp_path
    write_json(root / "usr/share/glvnd/egl_vendor.d/10_nvidia.json", "libEGL_nvidia.so.0")
    add_library(root, "libEGL_mesa", "0.0.0", link="0")
    result = checks.check_egl_libraries(make_system(root))
    assert result.status == FAIL
    assert "libEGL_nvidia, libnvidia-eglcore" in result.detail
    assert "NVIDIA_DRIVER_CAPABILITIES=all" in result.fix and "libnvidia-gl-550" in result.fix


def test_egl_libraries_in_ld_library_path_count_without_ldconfig(tmp_path):
    add_library(tmp_path, "libEGL_mesa", "0.0.0")
    folder = tmp_path / "opt/nvidia/lib"
    folder.mkdir(parents=True)
    for name in ["libEGL_nvidia.so.0", f"libnvidia-eglcore.so.{DRIVER}"]:
        (folder / name).write_bytes(b"\x7fELF")
    system = make_system(tmp_path, {"LD_LIBRARY_PATH": "/opt/nvidia/lib"})
    result = checks.check_egl_libraries(system)
    assert result.status == PASS and "/opt/nvidia/lib/libEGL_nvidia.so.0" in result.detail


def test_missing_nvidia_egl_vendor_file_fails_naming_the_file_to_create(machine):
    (machine / "usr/share/glvnd/egl_vendor.d/10_nvidia.json").unlink()
    result = checks.check_egl_vendor_file(make_system(machine))
    assert result.status == FAIL
    assert "50_mesa.json -> libEGL_mesa.so.0" in result.detail
    assert "10_nvidia.json" in result.fix and "libEGL_nvidia.so.0" in result.fix


def test_egl_vendor_env_vars_replace_the_default_folders(machine):
    write_json(machine / "opt/egl/mesa_only.json", "libEGL_mesa.so.0")
    only_mesa = make_system(machine, {"__EGL_VENDOR_LIBRARY_FILENAMES": "/opt/egl/mesa_only.json"})
    result = checks.check_egl_vendor_file(only_mesa)
    assert result.status == FAIL and "__EGL_VENDOR_LIBRARY_FILENAMES" in result.fix

    missing = make_system(machine, {"__EGL_VENDOR_LIBRARY_FILENAMES": "/opt/egl/nope.json"})
    assert "/opt/egl/nope.json does not exist" in checks.check_egl_vendor_file(missing).detail

    write_json(machine / "opt/vendors/10_nvidia.json", "libEGL_nvidia.so.0")
    in_dirs = make_system(machine, {"__EGL_VENDOR_LIBRARY_DIRS": "/opt/vendors"})
    assert checks.check_egl_vendor_file(in_dirs).detail.startswith("/opt/vendors/10_nvidia.json")
    empty_dirs = make_system(machine, {"__EGL_VENDOR_LIBRARY_DIRS": "/opt/egl_empty"})
    assert checks.check_egl_vendor_file(empty_dirs).status == FAIL


def test_vendor_file_pointing_at_a_missing_absolute_library_fails(machine):
    write_json(
        machine / "usr/share/glvnd/egl_vendor.d/10_nvidia.json", "/opt/gone/libEGL_nvidia.so.0"
    )
    result = checks.check_egl_vendor_file(make_system(machine))
    assert (
        result.status == FAIL and "points at missing /opt/gone/libEGL_nvidia.so.0" in result.detail
    )


def test_vulkan_icd_env_vars_are_honoured_and_only_warn(machine):
    broken = make_system(machine, {"VK_ICD_FILENAMES": "/etc/vulkan/icd.d/missing.json"})
    result = checks.check_vulkan_icd(broken)
    assert result.status == WARN and "missing.json does not exist" in result.detail
    assert "VK_ICD_FILENAMES" in result.fix
    # VK_DRIVER_FILES wins over VK_ICD_FILENAMES, as in the Vulkan loader
    fixed = make_system(
        machine,
        {
            "VK_ICD_FILENAMES": "/etc/vulkan/icd.d/missing.json",
            "VK_DRIVER_FILES": "/usr/share/vulkan/icd.d/nvidia_icd.json",
        },
    )
    assert checks.check_vulkan_icd(fixed).status == PASS


def test_vulkaninfo_without_nvidia_device_warns(machine):
    cpu_only = CommandResult(0, stdout="GPU0:\n\tdeviceName = llvmpipe (LLVM 15.0.6, 256 bits)\n")
    result = checks.check_vulkaninfo(make_system(machine, commands={"vulkaninfo": cpu_only}))
    assert result.status == WARN and "llvmpipe" in result.detail
    failing = CommandResult(1, stderr="ERROR: [Loader Message] vkCreateInstance failed: -9\n")
    result = checks.check_vulkaninfo(make_system(machine, commands={"vulkaninfo": failing}))
    assert result.status == WARN and "vkCreateInstance failed" in result.detail
    assert (
        checks.check_vulkaninfo(make_system(machine, commands={"vulkaninfo": NOT_FOUND})).status
        == SKIP
    )


def test_xdg_runtime_dir_problems_each_name_their_remedy(machine):
    (machine / "run/user/1000").chmod(0o755)
    result = checks.check_xdg_runtime_dir(make_system(machine))
    assert (result.status, result.detail) == (WARN, "/run/user/1000 has mode 755, not 700")
    assert result.fix == 'chmod 700 "/run/user/1000"'

    unset = make_system(machine)
    del unset.environ["XDG_RUNTIME_DIR"]
    assert "mkdir -p -m 700" in checks.check_xdg_runtime_dir(unset).fix

    missing = make_system(machine, {"XDG_RUNTIME_DIR": "/run/user/42"})
    assert checks.check_xdg_runtime_dir(missing).fix == 'mkdir -p -m 700 "/run/user/42"'

    (machine / "run/user/1000").chmod(0o700)
    other_user = make_system(machine)
    other_user.uid = os.getuid() + 1
    result = checks.check_xdg_runtime_dir(other_user)
    assert result.status == WARN and "chown" in result.fix


def test_render_check_sets_the_gl_backend_in_the_child(machine):
    system = make_system(machine, {"PYOPENGL_PLATFORM": "glx"})
    result = render.check_mujoco_render(system, "egl")
    assert result.status == PASS and "412 colours" in result.detail
    argv, env = system.run.calls[0]
    assert argv[1:] == [render.PROBES, "mujoco"]
    assert (env["MUJOCO_GL"], env["PYOPENGL_PLATFORM"]) == ("egl", "egl")


def test_blank_render_fails(machine):
    blank = probe_output({**NVIDIA_PROBE, "colors": 1})
    result = render.check_mujoco_render(make_system(machine, commands={"probe:mujoco": blank}))
    assert result.status == FAIL and result.detail.startswith("blank image")
    assert "versions" in result.fix


def test_crashing_or_hanging_render_fails_without_taking_the_doctor_down(machine):
    crash = CommandResult(-11, stderr="")
    result = render.check_mujoco_render(make_system(machine, commands={"probe:mujoco": crash}))
    assert (result.status, result.detail) == (FAIL, "crashed with SIGSEGV")
    hang = CommandResult(124, timed_out=True)
    assert (
        "hung"
        in render.check_mujoco_render(make_system(machine, commands={"probe:mujoco": hang})).detail
    )
    error = CommandResult(
        1, stderr="Traceback ...\nImportError: Cannot initialize a EGL device display.\n"
    )
    result = render.check_mujoco_render(make_system(machine, commands={"probe:mujoco": error}))
    assert result.detail == "ImportError: Cannot initialize a EGL device display."
    osmesa = render.check_mujoco_render(
        make_system(machine, commands={"probe:mujoco": error}), "osmesa"
    )
    assert "libosmesa6" in osmesa.fix


def test_software_rendering_fails_only_when_a_gpu_driver_is_present(machine):
    mesa = probe_output({**NVIDIA_PROBE, "renderer": "llvmpipe (LLVM 15.0.6, 256 bits)"})
    with_gpu = render.check_mujoco_render(make_system(machine, commands={"probe:mujoco": mesa}))
    assert with_gpu.status == FAIL and "__EGL_VENDOR_LIBRARY_FILENAMES" in with_gpu.fix
    cpu_only = make_system(machine, commands={"probe:mujoco": mesa, "nvidia-smi": NOT_FOUND})
    assert render.check_mujoco_render(cpu_only).status == PASS


def test_unknown_gl_backend_is_rejected_before_running_anything(machine):
    system = make_system(machine)
    with pytest.raises(ValueError, match="egl"):
        render.check_mujoco_render(system, "glfw")
    assert system.run.calls == []


def test_isaaclab_render_is_skipped_without_isaaclab_and_checked_with_it(machine):
    system = make_system(machine)
    assert render.check_isaaclab_render(system).status == SKIP
    # warp logs kernel loads on stdout before the probe's JSON line
    noise = "Module newton._src.geometry.bvh load on device 'cuda:0' took 0.93 ms  (cached)\n"
    good = {"shape": [1, 1, 32, 32], "colors": 23, "renderer": "Newton warp ray tracer on cuda:0"}
    system = make_system(machine, commands={"probe:isaaclab": probe_output(good, noise)})
    system.has_module = lambda name: True
    assert render.check_isaaclab_render(system).status == PASS
    system.run.outputs["probe:isaaclab"] = probe_output({**good, "colors": 1}, noise)
    assert render.check_isaaclab_render(system).status == FAIL


def test_cli_prints_table_or_json_and_exits_nonzero_on_failure(machine, capsys):
    assert main([], make_system(machine)) == 0
    assert "PASS    NVIDIA driver" in capsys.readouterr().out
    broken = make_system(machine, commands={"nvidia-smi": NOT_FOUND})
    assert main(["--json"], broken) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {"name": "NVIDIA driver", "status": FAIL} == {
        k: report["checks"][0][k] for k in ("name", "status")
    }
    assert main(["--gl", "osmesa"], make_system(machine, {"MUJOCO_GL": "glfw"})) == 0
    assert "MuJoCo render (osmesa)" in capsys.readouterr().out


def test_doctor_runs_on_this_machine():
    """The real CLI: a clear table and a non-zero exit where there is no NVIDIA driver."""
    done = subprocess.run(
        [sys.executable, "-m", "dreamer.doctor"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in done.stderr, done.stderr
    for name in ["NVIDIA driver", "EGL vendor file", "XDG_RUNTIME_DIR", "MuJoCo render"]:
        assert name in done.stdout
    if shutil.which("nvidia-smi") is None:
        assert "FAIL    NVIDIA driver" in done.stdout and "How to fix:" in done.stdout
        assert done.returncode == 1
    else:
        assert done.returncode == int("\nFAIL " in done.stdout)


@pytest.mark.isaaclab
@pytest.mark.skipif(
    not module_importable("isaaclab"),
    reason="Isaac Lab is not installed in this interpreter",
)
def test_isaaclab_probe_renders_on_this_machine():
    """The real Newton warp probe (first run compiles warp kernels: ~30 s on 2 CPU cores)."""
    result = render.check_isaaclab_render(System())
    assert result.status == PASS, result
