"""Docker HEALTHCHECK of the model image: healthy when the service in it reports SERVING.

One image runs text, vision, audio or fusion, so this asks the standard grpc.health.v1 service on
each of their ports (MMSERVE_<SERVICE>_PORT, default 50051-50054); only the running one answers.
Plain-text gRPC only; Kubernetes ignores HEALTHCHECK and uses the chart's probes instead.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_SERVICES = (("TEXT", 50051), ("VISION", 50052), ("FUSION", 50053), ("AUDIO", 50054))


def serving(port: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    ports = [os.environ.get(f"MMSERVE_{name}_PORT", str(default)) for name, default in _SERVICES]
    sys.exit(0 if any(serving(port) for port in ports) else 1)
