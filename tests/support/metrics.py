"""Reads a service's Prometheus endpoint the way Prometheus does (prometheus-client's parser)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


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
