"""Tracing is turned on by the standard OTEL_* variables only, and off it installs nothing."""

from __future__ import annotations

import grpc
import pytest

from services.common import tracing


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_SERVICE_NAME": "mine"}, False),  # a name alone exports nowhere
    ],
)
def test_requested_by_the_standard_variables(environ: dict[str, str], expected: bool) -> None:
    assert tracing.requested(environ) is expected


def test_off_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure("text") is False and not tracing.enabled()
    assert tracing.server_interceptors() == [] and tracing.aio_client_interceptors() == []
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        assert tracing.traced_channel(channel) is channel
    finally:
        channel.close()
    assert tracing.capture() is None
    with tracing.span("decode"):  # a shared no-op
        pass
    tracing.record_batch([(None, 0.0)], 0.0, 1.0, {})  # nothing to record, nothing raised
