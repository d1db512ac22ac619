"""Facts about the machine a benchmark ran on, for its results' metadata."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_state() -> dict:
    """Which arflows was measured (commit, uncommitted changes) and how busy the machine was."""
    state: dict = {}
    try:  # the working tree may hold uncommitted changes
        git = ["git", "--no-optional-locks", "-C", str(Path(__file__).resolve().parent)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "../arflows"], capture_output=True
        )
        state["git commit"] = commit.stdout.decode().strip() or None
        state["uncommitted changes in arflows/"] = bool(changed.stdout.strip())
    except OSError:
        pass
    if hasattr(os, "getloadavg"):
        state["load average (1, 5, 15 min)"] = [round(v, 2) for v in os.getloadavg()]
    return state
