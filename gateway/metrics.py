"""The gateway's Prometheus metrics; safe with several gunicorn workers (multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.common.metrics import LATENCY_BUCKETS_S

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MERGED_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # In multiprocess mode the values live in files; metrics register on a private registry.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "mmserve_http_requests_total", "HTTP requests answered.", ("route", "method", "status"),
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "mmserve_http_request_duration_seconds", "Time to answer an HTTP request.", ("route", "method"),
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "mmserve_http_requests_in_flight", "HTTP requests being answered.",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.upstream = Histogram(
            "mmserve_upstream_request_duration_seconds", "Time of each gRPC call to a backend.",
            ("service", "method", "code"), buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.merged_requests = Histogram(
            "mmserve_upstream_merged_requests", "HTTP requests one text-embedding call answered.",
            buckets=MERGED_REQUEST_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
