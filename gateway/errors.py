"""One error shape for every response, and the one table from gRPC status codes to HTTP.

Body, everywhere: ``{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "..."}}``.
The table follows google/rpc/code.proto's HTTP mapping, as grpc-gateway does.
"""

from __future__ import annotations

import grpc
from flask import Response, jsonify

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# Statuses of errors the gateway raises itself that have no gRPC equivalent.
HTTP_ONLY_STATUS_NAMES = {405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}
RETRY_AFTER_S = {grpc.StatusCode.RESOURCE_EXHAUSTED: 1, grpc.StatusCode.UNAVAILABLE: 1}


class ApiError(Exception):
    """An error answered to the client; ``status`` is a gRPC code or an HTTP-only status."""

    def __init__(self, code: grpc.StatusCode | int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return self.code if isinstance(self.code, int) else HTTP_STATUS[self.code]

    @property
    def status_name(self) -> str:
        return HTTP_ONLY_STATUS_NAMES[self.code] if isinstance(self.code, int) else self.code.name


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def from_rpc_error(error: grpc.RpcError, service: str) -> ApiError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"the {service} service is unavailable; retry later"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"the {service} service did not answer within the deadline"
    return ApiError(code, details or code.name)


def error_response(error: ApiError) -> Response:
    response = jsonify({"error": {"code": error.http_status, "status": error.status_name, "message": error.message}})
    response.status_code = error.http_status
    retry_after = RETRY_AFTER_S.get(error.code) if not isinstance(error.code, int) else None
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response
