"""TLS clients follow rotated CA and client certificate files without being recreated: a real
gRPC server that reloads its own certificate and names the client certificate it sees, and
client files swapped on disk the way the kubelet swaps a Secret (one symlink rename)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from gateway.metrics import GatewayMetrics
from gateway.upstreams import Upstreams
from mmserve.v1 import common_pb2
from services.common import channel_rotation
from services.common.channel_rotation import AioRotatingChannel, RotatingChannel
from services.common.channels import (
    ROTATION_CHECK_S,
    ChannelSecurity,
    create_aio_channel,
    create_channel,
)
from services.common.settings import FusionSettings, GatewaySettings
from services.common.tls import ReloadingServerCertificates
from services.fusion.clients import EncoderClients
from tests.support.certs import Authority

WHO = "/test.Peer/Who"  # answers the common name of the client certificate it was called with
CHECK_S = 0.2


class MountedSecret:
    """A directory laid out as the kubelet mounts a Secret: each key a symlink through ``..data``
    to a versioned directory; an update writes a new version and renames one symlink over ``..data``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()

    def publish(self, files: dict[str, bytes]) -> None:
        version = self.directory / f"..{time.time_ns()}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
        staged = self.directory / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.directory / "..data")
        for name in files:
            if not (self.directory / name).is_symlink():
                (self.directory / name).symlink_to(Path("..data") / name)

    def path(self, name: str) -> str:
        return str(self.directory / name)


class PeerServer:
    """A real TLS server requiring client certificates from either CA, reloading its own certificate."""

    def __init__(self, cert: Path, key: Path, client_ca: Path) -> None:
        self.release = threading.Event()  # lets the calls sent as b"hold" answer
        self.seen: list[str] = []  # the client certificates' common names, call by call
        self.tokens: list[str] = []  # the authorization metadata of GetModelInfo calls
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = [
            grpc.method_handlers_generic_handler(
                "test.Peer", {"Who": grpc.unary_unary_rpc_method_handler(self._who)}
            )
        ]
        # The encoders' GetModelInfo, answering the caller's name as the model id: the gateway's
        # and fusion's own clients (their stubs made once) report whom the server saw.
        info = grpc.unary_unary_rpc_method_handler(
            self._model_info,
            request_deserializer=common_pb2.GetModelInfoRequest.FromString,
            response_serializer=common_pb2.ModelInfo.SerializeToString,
        )
        for service in ("TextEncoderService", "VisionEncoderService", "AudioEncoderService"):
            handlers.append(
                grpc.method_handlers_generic_handler(f"mmserve.v1.{service}", {"GetModelInfo": info})
            )
        self._server.add_generic_rpc_handlers(handlers)
        credentials = ReloadingServerCertificates(str(cert), str(key), str(client_ca)).credentials()
        self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"hold":
            self.release.wait(30)
        name = b",".join((context.auth_context() or {}).get("x509_common_name", ()))
        self.seen.append(name.decode())
        return name

    def _model_info(self, _request, context: grpc.ServicerContext) -> common_pb2.ModelInfo:
        self.tokens.append(dict(context.invocation_metadata()).get("authorization", ""))
        return common_pb2.ModelInfo(model_id=self._who(b"", context).decode(), embedding_dim=4)

    def stop(self) -> None:
        self.release.set()
        self._server.stop(None)


class Rotation:
    """Two CAs; a server whose certificate moves from CA-1 to CA-2 and which trusts clients of both;
    a client Secret holding ``ca.crt``, ``tls.crt``, ``tls.key``."""

    def __init__(self, directory: Path) -> None:
        self.scratch = directory / "scratch"
        self.scratch.mkdir()
        self.ca1 = Authority.create(directory, "test CA one")
        self.ca2 = Authority.create(directory, "test CA two")
        self.server_cert, self.server_key = directory / "server.crt", directory / "server.key"
        self.ca1.issue(self.server_cert, self.server_key, "server", ip="127.0.0.1")
        both = directory / "client-ca.pem"
        both.write_bytes(self.ca1.ca.read_bytes() + self.ca2.ca.read_bytes())
        self.server = PeerServer(self.server_cert, self.server_key, both)
        self.secret = MountedSecret(directory / "client-secret")
        self.secret.publish(self.client_files(self.ca1, "gateway-1"))

    def client_files(self, authority: Authority, name: str) -> dict[str, bytes]:
        cert, key = self.scratch / f"{name}.crt", self.scratch / f"{name}.key"
        authority.issue(cert, key, name, (name,))
        return {
            "ca.crt": authority.ca.read_bytes(),
            "tls.crt": cert.read_bytes(),
            "tls.key": key.read_bytes(),
        }

    def security(self, grace_s: float = 30.0) -> ChannelSecurity:
        return ChannelSecurity(
            self.secret.path("ca.crt"),
            self.secret.path("tls.crt"),
            self.secret.path("tls.key"),
            rotation_check_s=CHECK_S,
            rotation_grace_s=grace_s,
        )

    def rotate_to_ca2(self) -> None:
        """The server moves to CA-2 first, then the client's CA and identity: only a client that
        read its new CA can open a connection to the server now."""
        self.ca2.issue(self.server_cert, self.server_key, "server", ip="127.0.0.1")
        self.secret.publish(self.client_files(self.ca2, "gateway-2"))


@pytest.fixture
def rotation(tmp_path: Path):
    setup = Rotation(tmp_path)
    try:
        yield setup
    finally:
        setup.server.stop()


def test_a_sync_client_follows_rotated_files_and_calls_in_flight_finish(rotation: Rotation) -> None:
    channel = create_channel(rotation.server.address, rotation.security(grace_s=3.0))
    assert isinstance(channel, RotatingChannel)
    who = channel.unary_unary(WHO)  # held like a stub's method, across the rotation
    try:
        assert who(b"", timeout=5) == b"gateway-1"
        held = who.future(b"hold", timeout=30)
        old = channel._state[1]
        rotation.rotate_to_ca2()
        answers = []
        deadline = time.monotonic() + 10
        while (not answers or answers[-1] != b"gateway-2") and time.monotonic() < deadline:
            answers.append(who(b"", timeout=5))  # every call succeeds, before and after the swap
            time.sleep(0.05)
        assert answers[-1] == b"gateway-2" and set(answers) <= {b"gateway-1", b"gateway-2"}
        assert channel.generation == 1
        assert "gateway-2" in rotation.server.seen
        rotation.server.release.set()
        assert held.result(timeout=10) == b"gateway-1"  # the call on the old channel finished
        deadline = time.monotonic() + 10
        while channel._retired and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not channel._retired
        with pytest.raises(ValueError):  # the replaced channel is closed once the grace is over
            old.unary_unary(WHO)(b"", timeout=5)
        assert who(b"", timeout=5) == b"gateway-2"
    finally:
        channel.close()


def test_a_half_written_update_is_ignored_until_it_is_whole(
    rotation: Rotation, caplog: pytest.LogCaptureFixture
) -> None:
    channel = create_channel(rotation.server.address, rotation.security())
    who = channel.unary_unary(WHO)
    try:
        assert who(b"", timeout=5) == b"gateway-1"
        current = {name: Path(rotation.secret.path(name)).read_bytes() for name in ("ca.crt", "tls.key")}
        update = rotation.client_files(rotation.ca1, "gateway-3")
        with caplog.at_level(logging.WARNING, logger=channel_rotation.__name__):
            rotation.secret.publish({**update, "tls.key": current["tls.key"]})  # new cert, old key
            time.sleep(CHECK_S * 5)
            for _ in range(5):
                assert who(b"", timeout=5) == b"gateway-1"
                time.sleep(CHECK_S)
        assert channel.generation == 0
        refusals = [r for r in caplog.records if "cannot reload the TLS client files" in r.getMessage()]
        assert len(refusals) == 1  # one warning per bad update, not one per check
        rotation.secret.publish(update)
        deadline = time.monotonic() + 10
        while who(b"", timeout=5) != b"gateway-3" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert who(b"", timeout=5) == b"gateway-3"
        assert channel.generation == 1
    finally:
        channel.close()


def test_the_files_are_looked_at_by_the_clock_not_by_every_call(
    rotation: Rotation, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = []
    real_stamp = channel_rotation._stamp
    monkeypatch.setattr(channel_rotation, "_stamp", lambda paths: stamps.append(1) or real_stamp(paths))
    security = ChannelSecurity(
        rotation.secret.path("ca.crt"),
        rotation.secret.path("tls.crt"),
        rotation.secret.path("tls.key"),
        rotation_check_s=3600,
    )
    with create_channel(rotation.server.address, security) as channel:
        who = channel.unary_unary(WHO)
        for _ in range(200):
            assert who(b"", timeout=5) == b"gateway-1"
    assert len(stamps) == 1  # the one taken when the channel was made


def _until(read, expected: str, timeout_s: float) -> list[str]:
    """What ``read()`` answered, called until it answers ``expected`` or the time is up."""
    answers = [read()]
    deadline = time.monotonic() + timeout_s
    while answers[-1] != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        answers.append(read())
    return answers


def test_the_gateway_upstreams_follow_rotated_files_within_the_check_interval(rotation: Rotation) -> None:
    address = rotation.server.address
    token = rotation.scratch / "token"
    token.write_text("gateway-token\n")  # so the token interceptor sits on top, as deployed
    settings = GatewaySettings(
        text_address=address, vision_address=address, fusion_address=address, audio_address=address,
        tls_ca_file=rotation.secret.path("ca.crt"), tls_client_cert_file=rotation.secret.path("tls.crt"),
        tls_client_key_file=rotation.secret.path("tls.key"), auth_token_file=str(token),
    )  # fmt: skip
    upstreams = Upstreams(settings, GatewayMetrics())
    request = common_pb2.GetModelInfoRequest()
    try:
        assert upstreams.call("text", "GetModelInfo", request).model_id == "gateway-1"
        rotation.rotate_to_ca2()
        rotated = time.monotonic()
        answers = _until(lambda: upstreams.call("text", "GetModelInfo", request).model_id, "gateway-2", 15)
        assert answers[-1] == "gateway-2" and set(answers) <= {"gateway-1", "gateway-2"}
        assert time.monotonic() - rotated < ROTATION_CHECK_S + 3
        for name in ("vision", "audio"):
            assert upstreams.call(name, "GetModelInfo", request).model_id == "gateway-2"
        assert set(rotation.server.tokens) == {"Bearer gateway-token"}
    finally:
        upstreams.close()


async def test_fusion_encoder_clients_follow_rotated_files_within_the_check_interval(
    rotation: Rotation,
) -> None:
    token = rotation.scratch / "token"
    token.write_text("fusion-token\n")
    settings = FusionSettings(
        host="127.0.0.1", port=0, text_address=rotation.server.address,
        vision_address=rotation.server.address, audio_address="",
        tls_ca_file=rotation.secret.path("ca.crt"), tls_client_cert_file=rotation.secret.path("tls.crt"),
        tls_client_key_file=rotation.secret.path("tls.key"), auth_token_file=str(token),
    )  # fmt: skip
    clients = EncoderClients(settings)
    clients.start()
    try:
        assert (await clients.text.model_info()).model_id == "gateway-1"
        rotation.rotate_to_ca2()
        rotated = time.monotonic()
        answers = []
        while (not answers or answers[-1] != "gateway-2") and time.monotonic() < rotated + 15:
            answers.append((await clients.text.model_info()).model_id)
            await asyncio.sleep(0.1)
        assert answers[-1] == "gateway-2" and set(answers) <= {"gateway-1", "gateway-2"}
        assert time.monotonic() - rotated < ROTATION_CHECK_S + 3
        assert (await clients.image.model_info()).model_id == "gateway-2"
        assert set(rotation.server.tokens) == {"Bearer fusion-token"}
    finally:
        await clients.close()


def test_plaintext_channels_keep_their_own_code_path() -> None:
    channel = create_channel("127.0.0.1:1")
    assert not isinstance(channel, RotatingChannel)
    channel.close()


async def test_an_asyncio_client_follows_rotated_files_and_calls_in_flight_finish(
    rotation: Rotation,
) -> None:
    channel = create_aio_channel(rotation.server.address, rotation.security(grace_s=3.0))
    assert isinstance(channel, AioRotatingChannel)
    who = channel.unary_unary(WHO)
    try:
        assert await who(b"", timeout=5) == b"gateway-1"
        held = asyncio.ensure_future(who(b"hold", timeout=30))
        old = channel._state[1]
        state = channel.get_state()
        assert state == grpc.ChannelConnectivity.READY
        watcher = asyncio.ensure_future(channel.wait_for_state_change(state))
        rotation.rotate_to_ca2()
        answers = []
        deadline = time.monotonic() + 10
        while (not answers or answers[-1] != b"gateway-2") and time.monotonic() < deadline:
            answers.append(await who(b"", timeout=5))
            await asyncio.sleep(0.05)
        assert answers[-1] == b"gateway-2" and set(answers) <= {b"gateway-1", b"gateway-2"}
        assert channel.generation == 1
        await asyncio.wait_for(watcher, 5)  # a state watcher moves on to the new channel
        rotation.server.release.set()
        assert await asyncio.wait_for(held, 10) == b"gateway-1"
        deadline = time.monotonic() + 10
        while channel._retired and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not channel._retired
        assert old.get_state() == grpc.ChannelConnectivity.SHUTDOWN
        assert await who(b"", timeout=5) == b"gateway-2"
    finally:
        await channel.close()


def test_plaintext_asyncio_channels_keep_their_own_code_path() -> None:
    async def make() -> None:
        channel = create_aio_channel("127.0.0.1:1")
        assert not isinstance(channel, AioRotatingChannel)
        await channel.close()

    asyncio.run(make())
