"""OpenTelemetry tracing across every hop, off unless the standard OTEL_* variables ask for it.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and
neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none`` says otherwise. Spans go over
OTLP/HTTP, or OTLP/gRPC when ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or its ``_TRACES_`` form) is
``grpc``; the SDK reads the rest (sampler, headers, batch delays) from the environment itself.
The service name is ``OTEL_SERVICE_NAME`` or ``mmserve-<component>``.

The maintained instrumentations do the hops: the Flask one in the gateway, the gRPC server and
client interceptors everywhere else, which carry W3C ``traceparent`` in the call metadata. This
module adds the spans only mmserve knows about: a request's wait in the batch queue, the batched
forward pass it shared (with the batch's size), and decode/preprocess steps.

Off costs nothing: no interceptor is installed, ``capture()`` returns None and ``span()`` is a
shared no-op, so the hot path pays one attribute read. ``opentelemetry`` is imported only when on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

_TRACER_NAME = "mmserve"
_NO_SPAN = contextlib.nullcontext()


def requested(environ: os._Environ | dict[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


class _State:
    tracer: Any = None  # an opentelemetry Tracer once configure() has run with tracing requested


_state = _State()


def enabled() -> bool:
    return _state.tracer is not None


def configure(component: str) -> bool:
    """Installs the tracer provider and OTLP exporter for this process (after any fork); True if on."""
    if _state.tracer is not None or not requested():
        return _state.tracer is not None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": f"mmserve-{component}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    _state.tracer = trace.get_tracer(_TRACER_NAME)
    return True


def _exporter():
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    )
    if protocol.strip().lower() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:  # http/protobuf, the specification's default
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def shutdown() -> None:
    """Flushes spans still buffered (on a clean exit)."""
    if _state.tracer is not None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


# --- hops -------------------------------------------------------------------------------------


def server_interceptors() -> list:
    """The gRPC aio server interceptor that continues the caller's trace; none when off."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def aio_client_interceptors() -> list:
    """gRPC aio client interceptors that start a client span and send ``traceparent``."""
    if not enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors as interceptors

    return interceptors()


def traced_channel(channel):
    """A synchronous channel whose calls (futures included) carry the current trace."""
    if not enabled():
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

    return grpcext.intercept_channel(channel, client_interceptor())


def instrument_flask(app) -> None:
    """A server span per HTTP request, continuing a ``traceparent`` the client sent."""
    if enabled():
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(app, excluded_urls="healthz,readyz,metrics")


# --- mmserve's own spans ----------------------------------------------------------------------


def set_request_id(request_id: str) -> None:
    """Marks the current span with the request id the logs carry, to go from one to the other."""
    if enabled() and request_id:
        from opentelemetry import trace

        trace.get_current_span().set_attribute("mmserve.request_id", request_id)


def span(name: str, **attributes: Any):
    """A child span of the current one for a step worth seeing (decode, preprocess)."""
    if not enabled():
        return _NO_SPAN
    return _state.tracer.start_as_current_span(name, attributes=attributes)


def capture():
    """The caller's trace context, kept with a queued request; None when off or outside a trace
    (warm-up), so work no request asked for leaves no spans."""
    if not enabled():
        return None
    from opentelemetry import context, trace

    current = context.get_current()
    return current if trace.get_current_span(current).get_span_context().is_valid else None


def record_batch(
    queued: Sequence[tuple[Any, float]], started: float, finished: float, attributes: dict[str, Any]
) -> None:
    """For each (context, enqueued-at) request of one batch, a ``batch.queue`` span (waiting) and a
    ``batch.forward`` span (the shared forward pass). Times are ``time.monotonic`` readings,
    turned into the wall clock spans need; the spans are written after the fact, so none of
    this runs while the model does."""
    if not enabled():
        return
    to_wall_ns = time.time_ns() - time.monotonic_ns()

    def ns(moment: float) -> int:
        return int(moment * 1e9) + to_wall_ns

    for parent, enqueued in queued:
        if parent is None:
            continue
        wait = _state.tracer.start_span("batch.queue", context=parent, start_time=ns(enqueued))
        wait.end(end_time=ns(started))
        forward = _state.tracer.start_span(
            "batch.forward", context=parent, start_time=ns(started), attributes=attributes
        )
        forward.end(end_time=ns(finished))
