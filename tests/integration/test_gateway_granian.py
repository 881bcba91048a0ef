"""The gateway under granian (``--server granian``): the same app, answers, metrics and limits as
under gunicorn, with a bounded request head."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from scripts.stack import ServiceProcess, start_service
from tests.integration.test_gateway_process import requests_counted
from tests.support.polling import eventually, settled

HEAD_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def granian_gateway(text_service: ServiceProcess, log_dir: Path) -> Iterator[ServiceProcess]:
    dead = "127.0.0.1:1"
    service = start_service(
        "gateway",
        args=[
            "--server",
            "granian",
            "--workers",
            "2",
            "--threads",
            "8",
            "--body-read-timeout-s",
            str(HEAD_TIMEOUT_S),
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--text-address",
            text_service.address,
            "--vision-address",
            dead,
            "--fusion-address",
            dead,
        ],  # fmt: skip
        log_dir=log_dir,
    )
    yield service
    service.stop()
    assert service.process.returncode == 0  # a clean shutdown on SIGTERM


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (names in any case: granian sends them lower-case) and body."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_granian_serves_the_same_embeddings_as_gunicorn(
    granian_gateway: ServiceProcess, gateway_service: ServiceProcess
) -> None:
    body = json.dumps({"input": ["a photo of a cat", "the stock market fell"]}).encode()
    status, headers, answer = post(
        granian_gateway.url + "/v1/embeddings", body, {"X-Request-ID": "granian-1"}
    )
    assert status == 200
    assert headers.get("X-Request-ID") == "granian-1"
    _, _, reference = post(gateway_service.url + "/v1/embeddings", body)
    assert json.loads(answer)["data"] == json.loads(reference)["data"]
    assert len(json.loads(answer)["data"][0]["embedding"]) == 384


def test_every_workers_requests_are_counted_in_one_scrape(granian_gateway: ServiceProcess) -> None:
    before = settled(lambda: requests_counted(granian_gateway.url, "/v1/embeddings", "200"))
    body = json.dumps({"input": "count me"}).encode()
    for _ in range(12):  # new connections each: granian spreads them over both workers
        assert post(granian_gateway.url + "/v1/embeddings", body)[0] == 200
    counted = eventually(
        lambda: requests_counted(granian_gateway.url, "/v1/embeddings", "200"), lambda n: n - before >= 12
    )
    assert counted - before == 12


def test_bad_and_oversized_bodies_get_the_error_shape(granian_gateway: ServiceProcess) -> None:
    status, _, answer = post(granian_gateway.url + "/v1/embeddings", b"{not json")
    assert status == 400
    assert json.loads(answer)["error"]["status"] == "INVALID_ARGUMENT"
    status, _, answer = post(granian_gateway.url + "/v1/embeddings", b"x" * (MAX_BODY_BYTES + 1))
    assert status == 413
    assert json.loads(answer)["error"]["status"] == "PAYLOAD_TOO_LARGE"


def test_a_request_head_that_stalls_is_dropped(granian_gateway: ServiceProcess) -> None:
    with socket.create_connection(("127.0.0.1", granian_gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: gateway\r\n")  # and never the rest
        began = time.monotonic()
        assert sock.recv(65536) == b""  # closed, with no answer
        assert time.monotonic() - began < HEAD_TIMEOUT_S + 3
    status, _, _ = post(
        granian_gateway.url + "/v1/embeddings", json.dumps({"input": "still served"}).encode()
    )
    assert status == 200
