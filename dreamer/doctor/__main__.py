"""``python -m dreamer.doctor``: check this machine's headless rendering stack.

Exit code 1 when a required check fails; ``--json`` prints the results as JSON instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from dreamer.doctor.render import GL_BACKENDS
from dreamer.doctor.report import exit_code, format_report, run_checks
from dreamer.doctor.system import System


def main(argv: list[str] | None = None, system: System | None = None) -> int:
    """Run the checks, print the report, return the exit code."""
    system = system or System()
    mujoco_gl = system.environ.get("MUJOCO_GL", "")
    parser = argparse.ArgumentParser(prog="python -m dreamer.doctor", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument(
        "--gl",
        choices=GL_BACKENDS,
        default=mujoco_gl if mujoco_gl in GL_BACKENDS else "egl",
        help="MuJoCo's headless GL backend to test (default: MUJOCO_GL if egl/osmesa, else egl)",
    )
    args = parser.parse_args(argv)
    results = run_checks(system, args.gl)
    code = exit_code(results)
    if args.json:
        rows = [dataclasses.asdict(result) for result in results]
        print(json.dumps({"ok": code == 0, "checks": rows}, indent=2))
    else:
        print(format_report(results))
    return code


if __name__ == "__main__":
    sys.exit(main())
