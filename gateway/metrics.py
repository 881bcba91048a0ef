"""The gateway's Prometheus metrics; safe with several gunicorn workers (multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.deferred import DeferredWork
from services.common.metrics import LATENCY_BUCKETS_S

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MERGED_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class GatewayMetrics:
    """The request path records through the methods below: the updates themselves are deferred
    (gateway.deferred), and the exposition applies what is queued before it answers."""

    def __init__(
        self, registry: CollectorRegistry | None = None, deferred: DeferredWork | None = None
    ) -> None:
        # In multiprocess mode the values live in files; metrics register on a private registry.
        self.registry = registry if registry is not None else CollectorRegistry()
        self.deferred = deferred if deferred is not None else DeferredWork()
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

    def request_started(self) -> None:
        self.deferred.later(self.in_flight.inc)

    def request_ended(self) -> None:
        self.deferred.later(self.in_flight.dec)

    def request_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        self.deferred.later(self._count_request, route, method, status, seconds)

    def upstream_answered(self, service: str, method: str, code: str, seconds: float) -> None:
        self.deferred.later(self._time_upstream, service, method, code, seconds)

    def requests_merged(self, requests: int) -> None:
        self.deferred.later(self.merged_requests.observe, requests)

    def _count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)

    def _time_upstream(self, service: str, method: str, code: str, seconds: float) -> None:
        self.upstream.labels(service, method, code).observe(seconds)

    def exposition(self) -> bytes:
        self.deferred.run_pending()  # this worker's own queue; another's lags by its interval at most
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
