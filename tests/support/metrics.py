"""Reads a service's Prometheus endpoint the way Prometheus does (prometheus-client's parser)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def scrape(url: str) -> dict[str, list]:
    """Metric family name -> its samples."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def sample_value(families: dict[str, list], sample_name: str, **labels: str) -> float:
    """Sum of the samples with this name whose labels include ``labels``."""
    total = 0.0
    for samples in families.values():
        for sample in samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def eventually(read: Callable[[], T], until: Callable[[T], bool], timeout_s: float = 3.0) -> T:
    """``read()`` again until ``until`` holds or time runs out; the last value either way, for the
    caller to assert on. A gateway worker applies its metric updates every 0.1 s
    (gateway/deferred.py), so a scrape answered by another worker may not count them yet."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def settled(read: Callable[[], T], quiet_s: float = 0.3, timeout_s: float = 5.0) -> T:
    """``read()`` until it stops changing for ``quiet_s``: a baseline that every request already
    answered is counted in (see ``eventually``)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = read()
        if again == value:
            break
        value = again
    return value
