"""Machine, versions and commit, recorded with every benchmark result."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata


def environment() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {}
    for pkg in ("torch", "numpy", "pandas", "pillow", "soundfile", "scipy", "lightning", "transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=top).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks/*.py"],
                                    capture_output=True, text=True, cwd=top).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {"machine": {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "os": platform.platform()},
            "python": sys.version.split()[0], "versions": versions, "commit": commit + ("+dirty" if dirty else "")}
