"""Where a benchmark runs: the facts printed beside its figures, so noise has a context.

A figure without its machine is not comparable: the load average says whether something else
competed, and the file system under a store says whether ``fsync`` cost anything (tmpfs costs
nothing, so a durable-write figure measured there is a fiction).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["describe", "file_system"]


def file_system(directory: Path) -> str:
    """The type of the file system holding ``directory`` (from /proc/self/mounts)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                _, mount_point, fs_type, *_ = line.split()
                inside = str(directory).startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, kind = mount_point, fs_type
    except OSError:
        pass
    return kind


def describe() -> str:
    """One line: CPUs, load average, Python."""
    try:
        load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load unknown"
    return f"{os.cpu_count()} CPUs, {load}, Python {platform.python_version()}"
