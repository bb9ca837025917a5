"""What every bench JSON line records about where it ran: the commit, Python, the CPU
model, the cores and the load average (bench scripts import it as ``benchenv``: they run
as ``.venv/bin/python bench/<script>.py``, with ``bench/`` on the path)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PACKAGES = ("torch", "numpy", "pyzmq", "networkx", "ray")


def versions() -> dict:
    """The installed versions of the packages a bench's numbers depend on (read from
    their metadata: nothing is imported)."""
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    """Where and on what a bench ran, with the load average as it starts; ``finished``
    adds the load at the end."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {"commit": commit, "python": platform.python_version(), "packages": versions(),
            "cpu": cpu_model(), "cores": os.cpu_count(), "load_before": os.getloadavg()}


def finished(env: dict) -> dict:
    """``env`` with the load average at the end (``load_after``)."""
    return {**env, "load_after": os.getloadavg()}
