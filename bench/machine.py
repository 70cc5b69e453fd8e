"""What a benchmark ran on, for its JSON and its printout: date, GPU, host CPU, versions.

Lent machines of one kind differ: the same pipeline run collected 120k-185k env steps/s on
different H100 hosts on one day (docs/benchmarks.md). The CPU model and usable cores are
recorded to tell such hosts apart where they can (the lent H100 VMs of 2026-11-25 named their
CPU only "Intel(R) Xeon(R) Processor").
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine(device: str | torch.device) -> dict:
    """Date, the device's name, GPUs and usable cores of this process, CPU model, torch."""
    device = torch.device(device)
    return {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": torch.cuda.device_count(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
    }
