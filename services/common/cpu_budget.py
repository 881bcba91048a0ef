"""How many CPUs this process may really use: the smallest of the cores it may run on and its
cgroup's CPU quota (a Kubernetes CPU limit, ``docker run --cpus``), never the node's core count.

torch starts one intra-op thread per core it sees; in a pod limited to 2 CPUs on a 64-core node
that is 64 threads fighting over 2 CPUs' worth of time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs granted by the cgroup quota (fractional), or None when unlimited or unknown."""
    v2 = root / "cpu.max"  # "max 100000" or "200000 100000"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max" or not period:
            return None
        return int(quota) / int(period)
    v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota = int(v1_quota.read_text())
        return None if quota <= 0 else quota / int(v1_period.read_text())
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs this process can use: affinity, capped by the quota rounded up (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota = cgroup_cpu_quota(root)
    except (OSError, ValueError):
        quota = None
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
