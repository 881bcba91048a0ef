"""The gRPC server every mmserve service runs: errors, metrics, health, reflection, shutdown.

``create_server`` builds and binds a server (tests bind port 0); ``serve`` runs a service
through its whole life: bind, report NOT_SERVING while the model loads and warms up, SERVING
once it answered a real forward pass, and on SIGTERM report NOT_SERVING, let in-flight calls
finish within the grace period, drain the batchers and exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tracing
from services.common.call_auth import CallerAuthInterceptor, CallerTokens
from services.common.errors import MmserveError
from services.common.logs import REQUEST_ID_HEADER, request_id_var, sanitize_request_id
from services.common.metrics import ServiceMetrics, start_metrics_server
from services.common.settings import ServerSettings
from services.common.tls import AllowedClientsInterceptor, ReloadingServerCertificates, parse_allowed_clients

_LOGGER = logging.getLogger(__name__)

# Replies: embeddings and labels, far below this; requests are capped per service by settings.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Service(Protocol):
    """What ``serve`` needs from a service: its gRPC servicers and its lifecycle."""

    service_names: Sequence[str]  # full proto names, e.g. "mmserve.v1.TextEncoderService"

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None:
        """Loads the model(s), runs the warm-up forward pass and starts the batchers."""
        ...

    async def stop(self) -> None:
        """Finishes queued work and releases resources."""
        ...


class _ErrorsAndMetricsInterceptor(grpc.aio.ServerInterceptor):
    """The one place that turns errors into status codes and records per-RPC metrics."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get(details.method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection): passed through untouched
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(details.method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[details.method] = wrapped
        return wrapped

    def _wrap(self, method: str, behavior):
        service_name, _, method_name = method.lstrip("/").rpartition("/")
        labels = {"grpc_type": "unary", "grpc_service": service_name, "grpc_method": method_name}
        started = self._metrics.started.labels(**labels)
        handling = self._metrics.handling_seconds.labels(**labels)
        handled = self._metrics.handled

        async def behavior_with_errors(request, context: grpc.aio.ServicerContext):
            began = time.perf_counter()
            started.inc()
            request_id = ""
            for key, value in context.invocation_metadata() or ():
                if key == REQUEST_ID_HEADER:
                    request_id = value
                    break
            token = request_id_var.set(sanitize_request_id(request_id))
            tracing.set_request_id(request_id)
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except MmserveError as exc:
                code = exc.code
                await context.abort(code, str(exc))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                _LOGGER.exception("unhandled error in %s", method)
                await context.abort(code, "internal error; see the service log for details")
            finally:
                handling.observe(time.perf_counter() - began)
                handled.labels(**labels, grpc_code=code.name).inc()
                request_id_var.reset(token)

        return behavior_with_errors


def _server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert_file:
        return None
    return ReloadingServerCertificates(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    ).credentials()


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        # Accept the clients' keepalive pings (they detect dead peers fast).
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_age_s > 0:
        # gRPC re-resolves DNS only when a connection ends, and nothing else ever ends one: without
        # an age, clients never see the replicas an autoscaler adds. GOAWAY lets calls in flight
        # finish (within the grace) while the client reconnects, re-resolving; gRPC adds +-10%
        # jitter so a fleet's connections do not all cycle at once.
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ]
    return options


def create_server(settings: ServerSettings, service: Service, metrics: ServiceMetrics) -> RunningServer:
    """Builds the server with the service, health and reflection, bound to settings.host:port."""
    # Tracing before errors/metrics: the call's span (continuing the caller's trace) is current there.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        *tracing.server_interceptors(),
        _ErrorsAndMetricsInterceptor(metrics),
    ]
    if settings.auth_tokens_file:  # first: an unknown caller is refused before anything runs
        interceptors.insert(0, CallerAuthInterceptor(CallerTokens(settings.auth_tokens_file)))
    allowed_clients = parse_allowed_clients(settings.tls_allowed_clients)
    if allowed_clients:
        if not settings.tls_client_ca_file:
            raise ValueError(
                "tls_allowed_clients needs tls_client_ca_file (mTLS): without it no client has a cert"
            )
        interceptors.insert(0, AllowedClientsInterceptor(allowed_clients))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    service.add_to_server(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    if settings.reflection:
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    address = f"{settings.host}:{settings.port}"
    credentials = _server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    return RunningServer(server, port, health_servicer)


async def _set_health(running: RunningServer, names: Sequence[str], status: int) -> None:
    for name in ("", *names):
        await running.health.set(name, status)


async def serve(settings: ServerSettings, service: Service, metrics: ServiceMetrics, name: str) -> None:
    """Runs ``service`` until SIGTERM or SIGINT, then shuts down gracefully."""
    tracing.configure(name)
    metrics_port = start_metrics_server(settings.metrics_port, settings.host, metrics.registry)
    running = create_server(settings, service, metrics)
    await _set_health(running, service.service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
    await running.server.start()
    _LOGGER.info("%s listening", name, extra={"fields": {"port": running.port, "metrics_port": metrics_port}})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    began = time.perf_counter()
    starting = asyncio.create_task(service.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is None:
        await _set_health(running, service.service_names, health_pb2.HealthCheckResponse.SERVING)
        _LOGGER.info("%s ready", name, extra={"fields": {"startup_s": round(time.perf_counter() - began, 2)}})
        await stopping
    elif starting.done():
        _LOGGER.error("%s failed to start", name, exc_info=starting.exception())
        await running.server.stop(0)
        raise SystemExit(1)

    _LOGGER.info("%s shutting down", name, extra={"fields": {"grace_period_s": settings.grace_period_s}})
    # Probes and round-robin clients see NOT_SERVING first and stop sending new work; calls
    # already accepted get the grace period to finish before the server cancels them.
    await running.health.enter_graceful_shutdown()
    await running.server.stop(settings.grace_period_s)
    if not starting.done():
        starting.cancel()
    await service.stop()
    tracing.shutdown()
    _LOGGER.info("%s stopped", name)
