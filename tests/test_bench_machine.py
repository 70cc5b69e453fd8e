"""Benchmark JSON names the machine it ran on, so figures from different lent hosts part."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from machine import cpu_model, describe_machine  # noqa: E402


def test_the_description_names_the_host_cpu_and_the_usable_cores():
    described = describe_machine("cpu")
    assert described["device"] == "cpu"
    assert described["cpus"] == len(os.sched_getaffinity(0)) >= 1
    assert described["cpu_model"] == cpu_model() and described["cpu_model"].strip()
    if Path("/proc/cpuinfo").exists():
        assert described["cpu_model"] in Path("/proc/cpuinfo").read_text()
    assert {"date", "gpus", "torch"} <= described.keys()
