"""The machine and the software versions that produced a figure (benchmarks and reports)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

VERSIONED = ["apache-beam", "feast", "mlflow", "fastapi", "uvicorn", "lightgbm", "faiss-cpu",
             "locust", "redis"]


def machine_info() -> dict[str, object]:
    """The machine and software that produced a figure."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "hostname": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages: how busy the shared machine was during a run."""
    try:
        return os.getloadavg()
    except OSError:
        return None
