"""gRPC TLS/mTLS with certificates made by the test, injected forward-pass failures, and log privacy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from mmserve.v1 import text_pb2, text_pb2_grpc
from scripts.stack import start_service
from services.common.channels import ChannelSecurity
from tests.support.certs import make_certs
from tests.support.faulty_text import FAIL_MARKER
from tests.support.logs import grpc_core_lines


def test_mtls_accepts_a_client_cert_and_refuses_plaintext_and_anonymous_clients(
    tmp_path: Path, log_dir
) -> None:
    certs = make_certs(tmp_path)
    with_client_cert = ChannelSecurity(
        str(certs.ca), str(certs.client_cert), str(certs.client_key)
    ).credentials()
    service = start_service(
        "text",
        args=[
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-client-ca-file",
            str(certs.ca),
        ],  # fmt: skip
        env={"GRPC_VERBOSITY": None},  # the service's own default, not the test run's
        credentials=with_client_cert,
        log_dir=log_dir,
    )
    request = text_pb2.EmbedTextRequest(texts=["over TLS"])
    try:
        with grpc.secure_channel(service.address, with_client_cert) as channel:
            reply = text_pb2_grpc.TextEncoderServiceStub(channel).Embed(request, timeout=30)
            assert list(reply.embeddings.shape) == [1, 384]
        anonymous = ChannelSecurity(str(certs.ca)).credentials()
        for channel in (
            grpc.secure_channel(service.address, anonymous),
            grpc.insecure_channel(service.address),
        ):
            with channel, pytest.raises(grpc.RpcError) as caught:
                text_pb2_grpc.TextEncoderServiceStub(channel).Embed(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # gRPC's core logs each refused handshake at INFO, in its own format; the services keep
        # its errors only (services/__init__.py), so a port scan cannot fill the JSON log.
        assert grpc_core_lines(service) == []
    finally:
        service.stop()


def test_failing_forward_pass_fails_only_its_batch_and_never_logs_inputs(log_dir) -> None:
    service = start_service("text", module="tests.support.faulty_text", log_dir=log_dir)
    secret = "confidential-sentence-7f3a9"
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = text_pb2_grpc.TextEncoderServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Embed(text_pb2.EmbedTextRequest(texts=[f"{secret} {FAIL_MARKER}"]), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert "inference failed" in caught.value.details()
            assert "injected forward-pass failure" in caught.value.details()

            def good(i: int) -> int:
                return len(
                    stub.Embed(text_pb2.EmbedTextRequest(texts=[f"{secret} {i}"]), timeout=30).truncated
                )

            with ThreadPoolExecutor(8) as pool:
                assert sum(pool.map(good, range(32))) == 32
        service.stop()
        log = service.log_path.read_text()
        assert "forward pass failed" in log, "the failure is logged"
        assert secret not in log, "request texts must never reach the logs"
    finally:
        service.stop()
