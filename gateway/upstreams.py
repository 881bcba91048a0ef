"""The gateway's gRPC backends: one channel each, made once per worker process (after fork).

``call`` is the one place that sets the deadline, forwards the request id, times the call
and turns a gRPC failure into the API error the client sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import from_rpc_error
from gateway.metrics import GatewayMetrics
from mmserve.v1 import fusion_pb2_grpc, text_pb2_grpc, vision_pb2_grpc
from services.common.channels import ChannelSecurity, create_channel
from services.common.logs import REQUEST_ID_HEADER, request_id_var
from services.common.settings import GatewaySettings

READY_TIMEOUT_S = 1.0


@dataclass
class _Backend:
    name: str
    channel: grpc.Channel
    stub: object
    health: health_pb2_grpc.HealthStub


class Upstreams:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        security = ChannelSecurity(settings.tls_ca_file, settings.tls_client_cert_file, settings.tls_client_key_file)
        self._deadline_s = settings.deadline_s
        self._metrics = metrics
        self._backends: dict[str, _Backend] = {}
        for name, address, stub_class in (
            ("text", settings.text_address, text_pb2_grpc.TextEncoderServiceStub),
            ("vision", settings.vision_address, vision_pb2_grpc.VisionEncoderServiceStub),
            ("fusion", settings.fusion_address, fusion_pb2_grpc.FusionServiceStub),
        ):
            channel = create_channel(address, security, settings.retry_backoff_ms)
            self._backends[name] = _Backend(name, channel, stub_class(channel), health_pb2_grpc.HealthStub(channel))

    def call(self, service: str, method: str, request):
        backend = self._backends[service]
        rpc = getattr(backend.stub, method)
        request_id = request_id_var.get()
        began = time.perf_counter()
        code = "OK"
        try:
            return rpc(request, timeout=self._deadline_s, metadata=((REQUEST_ID_HEADER, request_id),))
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
            raise from_rpc_error(error, service) from None
        finally:
            self._metrics.upstream.labels(service, method, code).observe(time.perf_counter() - began)

    def not_serving(self) -> list[str]:
        """Backends whose grpc.health.v1 check is not SERVING right now."""
        down = []
        futures = {
            name: b.health.Check.future(health_pb2.HealthCheckRequest(), timeout=READY_TIMEOUT_S)
            for name, b in self._backends.items()
        }
        for name, future in futures.items():
            try:
                if future.result().status != health_pb2.HealthCheckResponse.SERVING:
                    down.append(name)
            except grpc.RpcError:
                down.append(name)
        return down
