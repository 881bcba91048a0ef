"""One error shape for every response, and the one table from gRPC status codes to HTTP.

Body, everywhere: ``{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "..."}}``.
``code`` is the HTTP status; ``status`` the gRPC status name (google/rpc/code.proto's HTTP
mapping, as grpc-gateway uses), or for the few HTTP-only failures that have no gRPC status
(405, 408, 413, 415) an HTTP name. Errors raised by the gateway itself, Flask's own (404, 405, 413,
bad multipart) and the backends' all go through ``ApiError``, so they cannot drift apart.
"""

from __future__ import annotations

import grpc
from werkzeug.exceptions import HTTPException

HTTP_STATUS: dict[grpc.StatusCode, int] = {
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
# HTTP-only failures: status names for errors no gRPC code describes.
HTTP_ONLY_STATUS = {
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}
# The gRPC status reported for other HTTP errors Flask raises itself (routing, bad multipart).
_STATUS_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Worth retrying after a pause: the backend is busy or restarting.
RETRY_AFTER_S = {grpc.StatusCode.RESOURCE_EXHAUSTED: 1, grpc.StatusCode.UNAVAILABLE: 1}


class ApiError(Exception):
    """An error answered to the client: an HTTP status, a status name and a message."""

    def __init__(
        self,
        code: grpc.StatusCode | int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        reason: str = "",
        param: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        # Optional, for errors a client handles by kind (OpenAI's model_not_found) or by field.
        self.details = {key: value for key, value in (("reason", reason), ("param", param)) if value}
        if isinstance(code, grpc.StatusCode):
            self.http_status = HTTP_STATUS[code]
            self.status_name = code.name
            if code in RETRY_AFTER_S:
                self.headers.setdefault("Retry-After", str(RETRY_AFTER_S[code]))
        else:
            self.http_status = code
            self.status_name = HTTP_ONLY_STATUS[code]

    def body(self) -> dict:
        return {
            "error": {
                "code": self.http_status,
                "status": self.status_name,
                "message": self.message,
                **self.details,
            }
        }


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def too_large(max_body_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {max_body_bytes} bytes")


def from_http_exception(error: HTTPException, max_body_bytes: int) -> ApiError:
    """Flask's own errors (no route, wrong method, body too large, bad multipart) in our shape."""
    code = error.code or 500
    message = error.description or ""
    headers = {}
    if code == 413:
        return too_large(max_body_bytes)
    if code == 405:
        allowed = getattr(error, "valid_methods", None) or []
        headers["Allow"] = ", ".join(sorted(allowed))
        message = f"method not allowed; this route accepts {', '.join(sorted(allowed)) or 'no methods'}"
    if code in HTTP_ONLY_STATUS:
        return ApiError(code, message, headers)
    status = _STATUS_OF_HTTP.get(
        code, grpc.StatusCode.INTERNAL if code >= 500 else grpc.StatusCode.INVALID_ARGUMENT
    )
    return ApiError(status, message, headers)


def from_rpc_error(error: grpc.RpcError, service: str) -> ApiError:
    """A backend's failure with its own status code; transport failures get a message a caller can act on."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else ""
    if code == grpc.StatusCode.CANCELLED:
        # The gateway never cancels a call whose answer it still awaits, so the backend did: it
        # was shutting down as the call arrived. For the HTTP client that is a 503 to retry.
        code = grpc.StatusCode.UNAVAILABLE
    if code == grpc.StatusCode.UNAVAILABLE:
        details = f"the {service} service is unavailable; retry later"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"the {service} service did not answer within the deadline"
    elif code == grpc.StatusCode.OK:  # a broken backend that fails without a status
        code, details = grpc.StatusCode.UNKNOWN, f"the {service} service failed without a status"
    return ApiError(code, details or f"the {service} service answered {code.name}")
