"""Server TLS: certificates re-read when their files change, and an optional list of client identities.

A rotated certificate, key or client CA (cert-manager renewing a Secret, which Kubernetes swaps
in atomically) applies to the next connection without a restart: gRPC asks
``ReloadingServerCertificates.fetch`` on every handshake, which costs one ``stat`` per file
unless something changed. Connections already open keep the certificate they began with.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from services.common.call_auth import OPEN_SERVICES

_LOGGER = logging.getLogger(__name__)

# The peer identities gRPC puts in a call's auth context (grpc/grpc src/core/tsi/ssl_transport_security.cc).
_IDENTITY_KEYS = ("x509_subject_alternative_name", "x509_common_name")


def _stamp(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    stats = [os.stat(p) for p in paths]
    return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)


class ReloadingServerCertificates:
    """A server's certificate, key and (for mTLS) client CA bundle, reloaded when the files change."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self._paths = tuple(p for p in (cert_file, key_file, client_ca_file) if p)
        self._cert_file, self._key_file, self._client_ca_file = cert_file, key_file, client_ca_file
        self._stamp = _stamp(self._paths)
        self._initial = self._read()

    def _read(self) -> grpc.ServerCertificateConfiguration:
        # The ssl module refuses a key that does not match the certificate: a half-written
        # rotation is caught here instead of failing every handshake after it.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self._cert_file, self._key_file)
        key = Path(self._key_file).read_bytes()
        cert = Path(self._cert_file).read_bytes()
        client_ca = Path(self._client_ca_file).read_bytes() if self._client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration when the files changed since the last call, else None (keep)."""
        try:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return None
            config = self._read()
            if _stamp(self._paths) != stamp:
                return None  # changed while being read: take it on a later handshake
        except (OSError, ssl.SSLError, ValueError) as exc:
            _LOGGER.warning("cannot reload the TLS files; keeping the current ones: %s", exc)
            return None
        self._stamp = stamp
        _LOGGER.info("TLS certificate reloaded", extra={"fields": {"cert_file": self._cert_file}})
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=bool(self._client_ca_file)
        )


def parse_allowed_clients(value: str) -> frozenset[str]:
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def peer_identities(context: grpc.aio.ServicerContext) -> set[str]:
    """The verified client certificate's DNS SANs and common name (empty without mTLS)."""
    auth = context.auth_context() or {}
    return {value.decode() for key in _IDENTITY_KEYS for value in auth.get(key, ())}


class AllowedClientsInterceptor(grpc.aio.ServerInterceptor):
    """With mTLS, accepts only calls whose client certificate names one of ``allowed`` (SAN or CN):
    a certificate from the shared CA alone no longer reaches every service. Health stays open
    (the in-pod probe presents the service's own certificate, not a caller's)."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self._allowed = allowed
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # one checked handler per method

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get(details.method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        service = details.method.lstrip("/").rpartition("/")[0]
        if handler is None or service in OPEN_SERVICES or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        allowed = self._allowed

        async def checked(request, context: grpc.aio.ServicerContext):
            if not peer_identities(context) & allowed:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "client certificate not allowed")
            return await behavior(request, context)

        wrapped = grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[details.method] = wrapped
        return wrapped
