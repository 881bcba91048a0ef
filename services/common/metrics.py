"""Prometheus metrics of a gRPC service: per-RPC (go-grpc-prometheus names) and batching stages.

A registry is passed in rather than using the global one, so tests and several servers in one
process never collide ("Duplicated timeseries").
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Latency buckets from 0.5 ms to 30 s: covers a cached tiny batch up to a cold GPU batch.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Every metric a gRPC service exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        rpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", rpc_labels, registry=self.registry
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*rpc_labels, "grpc_code"),
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC to sending its response.",
            rpc_labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        stage_labels = ("model", "task")
        self.batch_size = Histogram(
            "mmserve_batch_size",
            "Items in each forward pass.",
            stage_labels,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "mmserve_queue_wait_seconds",
            "Time a request waited in the batcher's queue before its forward pass began.",
            stage_labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.inference_duration_seconds = Histogram(
            "mmserve_inference_duration_seconds",
            "Duration of one batched forward pass (preprocessing of the batch included).",
            stage_labels,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mmserve_queue_depth",
            "Items waiting in the batcher's queue.",
            stage_labels,
            registry=self.registry,
        )
        self.batch_failures = Counter(
            "mmserve_batch_failures_total",
            "Forward passes that raised; each fails only its own requests.",
            stage_labels,
            registry=self.registry,
        )


def start_metrics_server(port: int, host: str, registry: CollectorRegistry) -> int | None:
    """Serves /metrics on its own HTTP port (in a daemon thread); -1 disables. Returns the port."""
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_port
