#!/usr/bin/env python3
# wfe-rscript: 1
# name: hostinfo
# version: 1.0
# interpreter: python3
# description: report the host: name, cpus, memory, load, python version, free disk of the working directory
# timeout: 60
# requires: cpus=1

"""Report facts about the worker host as the result; takes no parameters (python3 stdlib only)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys


def meminfo() -> dict[str, int]:
    """Total and available memory in bytes from /proc/meminfo (empty where there is none)."""
    wanted = {"MemTotal": "memory_total", "MemAvailable": "memory_available"}
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in wanted:
                    out[wanted[key]] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def main() -> int:
    disk = shutil.disk_usage(".")
    results = {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        **meminfo(),
        "load": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cwd": os.getcwd(),
        "disk_free": disk.free,
        "disk_total": disk.total,
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    if os.environ.get("WFE_RESULT"):
        with open(os.environ["WFE_RESULT"], "w", encoding="utf-8") as f:
            json.dump({"results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
