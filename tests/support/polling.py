"""Waiting in tests for something that happens a little later (a head picked up, a worker's
metrics applied): poll, never sleep a fixed time and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    read: Callable[[], T], until: Callable[[T], object], timeout_s: float = 3.0, interval_s: float = 0.02
) -> T:
    """``read()`` again until ``until`` holds or time runs out; the last value either way, for the
    caller to assert on."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = read()
    return value


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Returns once ``condition()`` holds; fails the test if it does not within ``timeout_s``."""
    if not eventually(condition, bool, timeout_s):
        raise AssertionError(f"timed out waiting for {what}")


def settled(read: Callable[[], T], quiet_s: float = 0.3, timeout_s: float = 5.0) -> T:
    """``read()`` until it stops changing for ``quiet_s``: a baseline that everything already
    done is counted in (a gateway worker applies its metric updates every 0.1 s,
    gateway/deferred.py, so a scrape answered by another worker may not count them yet)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = read()
        if again == value:
            break
        value = again
    return value
