"""Checks of what headless rendering needs (``python -m dreamer.doctor``)."""

from dreamer.doctor.report import exit_code, format_report, run_checks
from dreamer.doctor.system import CheckResult, CommandResult, System

__all__ = ["CheckResult", "CommandResult", "System", "exit_code", "format_report", "run_checks"]
