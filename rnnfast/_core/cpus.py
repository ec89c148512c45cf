"""How many CPUs this process may use: its affinity mask, and the CPU quota of its cgroup (a container's
--cpus, a Kubernetes CPU limit). Neither os.cpu_count() nor os.sched_getaffinity() sees a quota: a container
limited to 2 CPUs on a 64-core host sees 64, and a kernel team of 64 threads that meet at a barrier every step
would spend the quota spinning, then be throttled for the rest of each 100 ms period.
"""
from __future__ import annotations

import math
import os


def affinity_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _ratio(quota, period):
    """quota / period in CPUs from the two numbers as text, or None: unreadable, "max" or -1 (no quota)."""
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_limit(directory):
    """CPUs allowed by cpu.max ("max 100000" or "200000 100000"), or None."""
    parts = (_read(os.path.join(directory, "cpu.max")) or "").split()
    return _ratio(*parts) if len(parts) == 2 else None


def _v1_limit(directory):
    """CPUs allowed by cpu.cfs_quota_us / cpu.cfs_period_us (quota -1: none), or None."""
    return _ratio(_read(os.path.join(directory, "cpu.cfs_quota_us")),
                  _read(os.path.join(directory, "cpu.cfs_period_us")))


def quota_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> float | None:
    """The smallest CPU quota on the way from this process's cgroup up to the root (each level's limit applies),
    in CPUs (fractional), or None where there is none or it cannot be read."""
    text = _read(proc)
    if not text:
        return None
    limits = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: the unified hierarchy
            base, read = root, _v2_limit
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's hierarchy
            base = next((os.path.join(root, d) for d in (controllers, "cpu,cpuacct", "cpu")
                         if os.path.isdir(os.path.join(root, d))), None)
            if base is None:
                continue
            read = _v1_limit
        else:
            continue
        # Inside a container's cgroup namespace the path is "/" and its own limit sits at the mount's root;
        # outside it the path leads from the root to the process's group. Every level on the way counts.
        rel = path.strip("/")
        parts = rel.split("/") if rel else []
        for depth in range(len(parts), -1, -1):
            got = read(os.path.join(base, *parts[:depth]))
            if got is not None:
                limits.append(got)
    return min(limits) if limits else None


def available() -> int:
    """The threads worth running: the affinity count, capped by the cgroup quota rounded up."""
    n = affinity_count()
    q = quota_limit()
    return max(1, min(n, math.ceil(q))) if q is not None else n
