"""Run every check and print them as a table with the fixes underneath."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from functools import partial

from dreamer.doctor import checks, render
from dreamer.doctor.system import FAIL, PASS, CheckResult, System


def all_checks(gl_backend: str = "egl") -> list[Callable[[System], CheckResult]]:
    """The checks in the order they are reported (the stack from the kernel up)."""
    return [
        checks.check_driver,
        checks.check_egl_libraries,
        checks.check_glx_library,
        checks.check_egl_vendor_file,
        checks.check_version_match,
        checks.check_vulkan_icd,
        checks.check_vulkaninfo,
        checks.check_xdg_runtime_dir,
        partial(render.check_mujoco_render, backend=gl_backend),
        render.check_isaaclab_render,
    ]


def run_checks(system: System, gl_backend: str = "egl") -> list[CheckResult]:
    """Every check's result on ``system``."""
    return [check(system) for check in all_checks(gl_backend)]


def exit_code(results: list[CheckResult]) -> int:
    """1 when a required check failed (warnings and skips do not count), else 0."""
    return int(any(result.status == FAIL for result in results))


def format_report(results: list[CheckResult], width: int = 100) -> str:
    """A status/check/detail table, then a numbered fix for every row that did not pass."""
    name_width = max(len(result.name) for result in results)
    lines = [f"{'STATUS':6}  {'CHECK':{name_width}}  DETAIL"]
    indent = " " * (8 + name_width + 2)
    for result in results:
        detail = textwrap.wrap(result.detail, max(width - len(indent), 30)) or [""]
        lines.append(f"{result.status.upper():6}  {result.name:{name_width}}  {detail[0]}")
        lines += [indent + more for more in detail[1:]]
    fixes = [result for result in results if result.status != PASS and result.fix]
    if fixes:
        lines += ["", "How to fix:"]
        for number, result in enumerate(fixes, 1):
            lines += textwrap.wrap(
                f"{number}. [{result.status.upper()}] {result.name}: {result.fix}",
                width,
                subsequent_indent="   ",
            )
    failed = sum(result.status == FAIL for result in results)
    lines += ["", f"{failed} required check(s) failed." if failed else "All required checks pass."]
    return "\n".join(lines)
