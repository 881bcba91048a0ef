"""The gateway's gRPC backends: one channel each, made once per worker process (after fork).

``call`` and ``start`` are the one place that sets a call's deadline, forwards the request id,
times the call and turns a gRPC failure into the API error the client sees. The deadline is the
request's: every call made for one HTTP request shares its budget (``deadline_s`` from the
moment the request arrived), so two calls in a row cannot take twice as long.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import ApiError, from_rpc_error
from gateway.metrics import GatewayMetrics
from gateway.text_merging import TextEmbedMerger
from mmserve.v1 import audio_pb2_grpc, fusion_pb2_grpc, text_pb2, text_pb2_grpc, vision_pb2_grpc
from services.common.channels import ROTATION_GRACE_S, ChannelSecurity, create_channel
from services.common.logs import REQUEST_ID_HEADER, request_id_var
from services.common.settings import GatewaySettings

# Readiness must answer before the kubelet's probe times out (1 s by default), whatever the backends do.
READY_TIMEOUT_S = 0.8
STUBS = {
    "text": text_pb2_grpc.TextEncoderServiceStub,
    "vision": vision_pb2_grpc.VisionEncoderServiceStub,
    "fusion": fusion_pb2_grpc.FusionServiceStub,
    "audio": audio_pb2_grpc.AudioEncoderServiceStub,
}
BACKENDS = tuple(STUBS)  # the backends /readyz reports on, in this order
# time.monotonic() by which the current request's upstream calls must be answered.
request_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("request_deadline", default=0.0)


@dataclass
class _Backend:
    channel: grpc.Channel
    stub: object
    health: health_pb2_grpc.HealthStub


class Pending:
    """A call under way (see ``Upstreams.start``)."""

    def __init__(self, future: grpc.Future, service: str) -> None:
        self._future = future
        self._service = service

    def result(self):
        try:
            return self._future.result()
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._service) from None

    def cancel(self) -> None:
        self._future.cancel()


class Upstreams:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        security = ChannelSecurity(
            settings.tls_ca_file,
            settings.tls_client_cert_file,
            settings.tls_client_key_file,
            settings.auth_token_file,
            # A channel replaced by rotated TLS files stays open for the calls still on it.
            rotation_grace_s=max(ROTATION_GRACE_S, settings.deadline_s),
        )
        self._deadline_s = settings.deadline_s
        self._metrics = metrics
        addresses = {
            "text": settings.text_address,
            "vision": settings.vision_address,
            "fusion": settings.fusion_address,
            "audio": settings.audio_address,
        }
        self._backends: dict[str, _Backend] = {}
        for name, address in addresses.items():
            channel = create_channel(address, security, settings.retry_backoff_ms)
            self._backends[name] = _Backend(
                channel, STUBS[name](channel), health_pb2_grpc.HealthStub(channel)
            )
        self._text_merger = (
            TextEmbedMerger(
                self._backends["text"].stub.Embed,
                lambda texts: self._call_now("text", "Embed", text_pb2.EmbedTextRequest(texts=texts)),
                max_items=settings.text_merge_max_items,
                max_in_flight=settings.text_merge_in_flight,
                observe_call=lambda code, seconds: metrics.upstream_answered("text", "Embed", code, seconds),
                observe_merged=metrics.requests_merged,
            )
            if settings.text_merge_in_flight > 0
            else None
        )

    def _deadline(self) -> float:
        """The time.monotonic() by which the current request's calls must be answered."""
        # Outside a request (tests, scripts): a fresh budget.
        return request_deadline.get() or time.monotonic() + self._deadline_s

    def _timeout_s(self, service: str) -> float:
        remaining = self._deadline() - time.monotonic()
        if remaining <= 0:
            raise ApiError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request's deadline passed before calling the {service} service",
            )
        return remaining

    def call(self, service: str, method: str, request):
        """A blocking call; returns the reply or raises the ApiError the client gets. The text
        service's ``Embed`` calls of concurrent requests are merged (see gateway.text_merging)."""
        if self._text_merger is not None and service == "text" and method == "Embed":
            return self._text_merger.embed(request.texts, self._deadline(), request_id_var.get())
        return self._call_now(service, method, request)

    def _call_now(self, service: str, method: str, request):
        rpc = getattr(self._backends[service].stub, method)
        timeout = self._timeout_s(service)
        began = time.perf_counter()
        code = "OK"
        try:
            return rpc(request, timeout=timeout, metadata=((REQUEST_ID_HEADER, request_id_var.get()),))
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
            raise from_rpc_error(error, service) from None
        finally:
            self._metrics.upstream_answered(service, method, code, time.perf_counter() - began)

    def start(self, service: str, method: str, request) -> Pending:
        """Starts a call without waiting, so independent calls run in parallel."""
        rpc = getattr(self._backends[service].stub, method)
        timeout = self._timeout_s(service)
        began = time.perf_counter()
        future = rpc.future(request, timeout=timeout, metadata=((REQUEST_ID_HEADER, request_id_var.get()),))

        def observe(done: grpc.Future) -> None:
            code = done.code()
            name = code.name if code is not None else "UNKNOWN"
            self._metrics.upstream_answered(service, method, name, time.perf_counter() - began)

        future.add_done_callback(observe)
        return Pending(future, service)

    def states(self) -> dict[str, str]:
        """Each backend's grpc.health.v1 state right now, checked in parallel: the reply's status
        (``SERVING``, ``NOT_SERVING``, ``SERVICE_UNKNOWN``), or the gRPC code of a check that
        failed (``UNAVAILABLE`` for a backend that is down, ``DEADLINE_EXCEEDED`` for one that
        did not answer within READY_TIMEOUT_S)."""
        futures = {
            name: backend.health.Check.future(health_pb2.HealthCheckRequest(), timeout=READY_TIMEOUT_S)
            for name, backend in self._backends.items()
        }
        states = {}
        for name, future in futures.items():
            try:
                states[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(future.result().status)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                states[name] = code.name if code is not None else "UNKNOWN"
        return states

    def close(self) -> None:
        for backend in self._backends.values():
            backend.channel.close()


def wait_all(pending: list[Pending]) -> list:
    """The replies of calls started together; on the first failure the others are cancelled."""
    try:
        return [call.result() for call in pending]
    except ApiError:
        for call in pending:
            call.cancel()
        raise
