"""Process facts read from /proc (Linux)."""

from __future__ import annotations


def rss_bytes(pid: int) -> int:
    """Resident set size of a process and nothing else (children are separate processes)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Children, their children, and so on (gunicorn's workers under a launcher's gateway)."""
    return [each for child in children(pid) for each in (child, *descendants(child))]


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and its descendants (gunicorn's master and workers)."""
    return rss_bytes(pid) + sum(tree_rss_bytes(child) for child in children(pid))
