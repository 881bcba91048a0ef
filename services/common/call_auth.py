"""Caller identity on the hops between services: each calling component (gateway, fusion) holds
its own token and presents it as ``authorization: Bearer <token>``; a service started with a
tokens file refuses every other call with UNAUTHENTICATED.

Health checks stay open: kubelet gRPC probes cannot send metadata, and health reveals nothing.
Tokens are compared in constant time; the file is re-read when it changes on disk, so a rotated
Kubernetes Secret takes effect without a restart.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

_LOGGER = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})


def read_token(path: str) -> str:
    """This component's own token (the first non-empty line of ``path``)."""
    for line in Path(path).read_text().splitlines():
        if line.strip():
            return line.strip()
    raise ValueError(f"{path} holds no token")


class CallerTokens:
    """The tokens a service accepts, from a file of lines ``<caller name> <token>`` (or just a token)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._callers: list[tuple[str, bytes]] = []
        self._load()
        if not self._callers:
            raise ValueError(f"{path} holds no caller token; refusing to run with auth on and no callers")

    def _load(self) -> None:
        stat = os.stat(self._path)
        stamp = (stat.st_mtime, stat.st_size)
        if stamp == self._stamp:
            return
        callers = []
        for line in Path(self._path).read_text().splitlines():
            name, _, token = line.strip().rpartition(" ")
            if token:
                callers.append((name.strip() or "caller", token.encode()))
        self._callers, self._stamp = callers, stamp

    def caller(self, presented: str) -> str | None:
        """The caller's name if ``presented`` is one of the tokens, else None."""
        try:
            self._load()
        except OSError:
            _LOGGER.warning("cannot re-read %s; keeping the tokens read before", self._path)
        given = presented.encode()
        names = [name for name, token in self._callers if hmac.compare_digest(given, token)]
        return names[0] if names else None


def _bearer(details: grpc.HandlerCallDetails) -> str:
    for key, value in details.invocation_metadata or ():
        if key == AUTHORIZATION:
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def refuse(_request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown caller token")

    async def refuse_stream(_requests, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown caller token")
        yield  # pragma: no cover - makes this an async generator

    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}  # fmt: skip
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **codecs)


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: CallerTokens) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service = details.method.lstrip("/").rpartition("/")[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        token = _bearer(details)
        if token and self._tokens.caller(token) is not None:
            return handler
        return _refusal(handler)


class TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds this component's token to every call of a synchronous channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class AioTokenClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds this component's token to every call of an asyncio channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), self._header)
        return await continuation(client_call_details._replace(metadata=metadata), request)
