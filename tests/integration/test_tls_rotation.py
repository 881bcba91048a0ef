"""Per-component TLS identities against a real text service: the client checks the server's SAN,
the server accepts only listed client identities, and a rotated certificate reaches new
connections without a restart."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmserve.v1 import text_pb2, text_pb2_grpc
from scripts.stack import ServiceProcess, start_service
from services.common.channels import ChannelSecurity, create_channel
from tests.support.certs import Authority, Identity

# The name the server's certificate holds, as a pod's would hold its Service's name; the test
# dials 127.0.0.1 (also in the certificate) or, to see a mismatch, localhost (not in it).
SERVER_NAME = "text.mmserve.svc"
REQUEST = text_pb2.EmbedTextRequest(texts=["over mTLS"])


@dataclass
class TlsStack:
    authority: Authority
    server: Identity
    gateway: Identity
    intruder: Identity
    service: ServiceProcess

    def security(self, client: Identity, **overrides: str) -> ChannelSecurity:
        return ChannelSecurity(str(self.authority.ca), str(client.cert), str(client.key), **overrides)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[TlsStack]:
    directory = tmp_path_factory.mktemp("tls")
    authority = Authority.create(directory)
    server = authority.issue(
        directory / "tls.crt", directory / "tls.key", "text", (SERVER_NAME,), ip="127.0.0.1"
    )
    gateway = authority.issue(directory / "gateway.crt", directory / "gateway.key", "gateway", ("gateway",))
    intruder = authority.issue(directory / "other.crt", directory / "other.key", "other", ("other",))
    gateway_credentials = ChannelSecurity(
        str(authority.ca), str(gateway.cert), str(gateway.key)
    ).credentials()
    service = start_service(
        "text",
        args=["--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
              "--tls-client-ca-file", str(authority.ca), "--tls-allowed-clients", "gateway, fusion"],
        credentials=gateway_credentials,
        log_dir=log_dir,
    )  # fmt: skip
    try:
        yield TlsStack(authority, server, gateway, intruder, service)
    finally:
        service.stop()


def _embed(channel: grpc.Channel) -> text_pb2.EmbedTextResponse:
    return text_pb2_grpc.TextEncoderServiceStub(channel).Embed(REQUEST, timeout=30)


def _served_serial(stack: TlsStack) -> int:
    """The serial of the certificate the server presents to a brand-new connection."""
    context = ssl.create_default_context(cafile=str(stack.authority.ca))
    context.load_cert_chain(str(stack.gateway.cert), str(stack.gateway.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", stack.service.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def test_a_listed_client_identity_is_served(stack: TlsStack) -> None:
    with create_channel(stack.service.address, stack.security(stack.gateway)) as channel:
        assert list(_embed(channel).embeddings.shape) == [1, 384]


def test_a_cert_from_the_same_ca_with_an_unlisted_identity_is_refused(stack: TlsStack) -> None:
    with create_channel(stack.service.address, stack.security(stack.intruder)) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _embed(channel)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Health stays open to any verified peer: the in-pod probe presents the service's own cert.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_client_dialing_a_name_the_certificate_does_not_hold_is_refused(stack: TlsStack) -> None:
    mismatched = f"localhost:{stack.service.port}"
    with create_channel(mismatched, stack.security(stack.gateway)) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _embed(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # The explicit override checks the certificate against the given name instead: served.
    override = stack.security(stack.gateway, target_name_override=SERVER_NAME)
    with create_channel(mismatched, override) as channel:
        assert list(_embed(channel).embeddings.shape) == [1, 384]


def test_a_rotated_certificate_reaches_new_connections_without_a_restart(stack: TlsStack) -> None:
    pid = stack.service.process.pid
    assert _served_serial(stack) == stack.server.serial
    with create_channel(stack.service.address, stack.security(stack.gateway)) as before:
        _embed(before)
        rotated = stack.authority.issue(
            stack.server.cert, stack.server.key, "text", (SERVER_NAME,), ip="127.0.0.1"
        )
        assert rotated.serial != stack.server.serial
        deadline = time.monotonic() + 10
        while _served_serial(stack) != rotated.serial and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _served_serial(stack) == rotated.serial
        _embed(before)  # the connection opened before the rotation keeps working
    with create_channel(stack.service.address, stack.security(stack.gateway)) as after:
        assert list(_embed(after).embeddings.shape) == [1, 384]
    assert stack.service.process.pid == pid and stack.service.process.poll() is None
    assert "TLS certificate reloaded" in stack.service.log_path.read_text()
