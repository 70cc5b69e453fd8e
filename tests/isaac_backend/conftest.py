"""Isaac Lab backend tests: the stand-in fixture, and no silent skips where Isaac Lab is required.

``DREAMER_REQUIRE_ISAACLAB=1`` (set by the README's test command for the Python 3.12 run) turns
every skip in this folder into a failure: there, a missing or broken Isaac Lab install must not
pass as "skipped".
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV_VAR = "DREAMER_REQUIRE_ISAACLAB"


def isaaclab_required() -> bool:
    """Whether this run must exercise real Isaac Lab (no skips allowed)."""
    return os.environ.get(REQUIRE_ENV_VAR, "") not in ("", "0")


@pytest.fixture
def fake_isaaclab(monkeypatch):
    """The Isaac Lab stand-in injected as ``isaaclab.envs`` (see ``isaac_standin.py``)."""
    from isaac_backend import isaac_standin as standin  # skips the test without gymnasium

    return standin.install_fake_isaaclab(monkeypatch)


def _fail_if_skipped(report, what: str) -> None:
    if report.skipped and isaaclab_required() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ENV_VAR}=1 but the {what} was skipped: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_skipped(outcome.get_result(), "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_skipped(outcome.get_result(), "module")
