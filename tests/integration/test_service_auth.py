"""Authenticated service hops: a service started with a caller-tokens file refuses calls without a
known token (health checks excepted, for kubelet probes), accepts the project's channels that
present one, and picks up a rotated file without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from mmserve.v1 import common_pb2, text_pb2, text_pb2_grpc
from scripts.stack import ServiceProcess, health_status, start_service
from services.common.channels import ChannelSecurity, create_channel
from tests.support.tiny_text_models import save_tiny_classifier


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("auth")
    tokens = root / "callers"
    tokens.write_text("gateway gw-token-1\nfusion fu-token-1\n")
    model = save_tiny_classifier(root / "tiny")  # a small real encoder: the test is about the hop
    args = ["--model", str(model), "--auth-tokens-file", str(tokens), "--reflection", "true"]
    service = start_service("text", args=args, log_dir=root)
    yield service, root
    service.stop()


def _stub(service: ServiceProcess, token_file: Path | None = None):
    channel = create_channel(service.address, ChannelSecurity(token_file=str(token_file or "")))
    return channel, text_pb2_grpc.TextEncoderServiceStub(channel)


def _code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_calls_without_a_known_token_are_refused(secured) -> None:
    service, root = secured
    (root / "wrong").write_text("not-a-token\n")
    request = text_pb2.EmbedTextRequest(texts=["hello"])
    for token_file in (None, root / "wrong"):
        channel, stub = _stub(service, token_file)
        with channel:
            assert _code(lambda stub=stub: stub.Embed(request, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
            assert _code(
                lambda stub=stub: stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
            ) == (grpc.StatusCode.UNAUTHENTICATED)
            with pytest.raises(grpc.RpcError) as caught:
                ProtoReflectionDescriptorDatabase(channel).get_services()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert health_status(service.address) == 1  # probes need no token


def test_the_project_channels_present_their_token(secured) -> None:
    service, root = secured
    (root / "gateway.token").write_text("gw-token-1\n")
    channel, stub = _stub(service, root / "gateway.token")
    with channel:
        reply = stub.Embed(text_pb2.EmbedTextRequest(texts=["hello"]), timeout=10)
        assert reply.embeddings.shape == [1, 32]
        assert "mmserve.v1.TextEncoderService" in set(
            ProtoReflectionDescriptorDatabase(channel).get_services()
        )


def test_a_rotated_tokens_file_takes_effect_without_a_restart(secured) -> None:
    service, root = secured
    (root / "old.token").write_text("fu-token-1\n")
    (root / "new.token").write_text("fu-token-2\n")
    time.sleep(0.01)  # a new modification time
    (root / "callers").write_text("gateway gw-token-1\nfusion fu-token-2\n")
    request = text_pb2.EmbedTextRequest(texts=["hello"])
    old_channel, old = _stub(service, root / "old.token")
    new_channel, new = _stub(service, root / "new.token")
    with old_channel, new_channel:
        assert _code(lambda: old.Embed(request, timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: new.Embed(request, timeout=10)) == grpc.StatusCode.OK


def test_a_tokens_file_without_tokens_stops_the_service(tmp_path: Path) -> None:
    empty = tmp_path / "callers"
    empty.write_text("\n")
    with pytest.raises(RuntimeError, match="exited"):
        start_service("text", args=["--auth-tokens-file", str(empty)], log_dir=tmp_path, timeout_s=60)
