"""One error hierarchy for every service, and the one table from errors to gRPC status codes."""

from __future__ import annotations

import grpc


class MmserveError(Exception):
    """Base of every error a service reports to its caller; the message is shown to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(MmserveError):
    """The request is malformed or breaks a documented limit."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MmserveError):
    """A named thing (head, model) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(MmserveError):
    """The request is valid but the system is not in a state to answer it (e.g. no shared space)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(MmserveError):
    """The queue is full; the caller should retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(MmserveError):
    """The service (or a backend it needs) is not serving right now."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(MmserveError):
    """The request's deadline passed before it could be answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InferenceError(MmserveError):
    """The model's forward pass failed for the batch this request was in."""

    code = grpc.StatusCode.INTERNAL


class UpstreamError(MmserveError):
    """A downstream service's failure, passed through to the caller with its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def decoder_message(exc: Exception) -> str:
    """A media decoder's own words for a failure, without file objects or errno numbers in them."""
    # libsndfile's errors (soundfile) carry error_string; FFmpeg's (PyAV) carry strerror.
    text = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
    return str(text) or type(exc).__name__
