"""Clients that send a request's headers and then stall its body can't starve the gateway's threads."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from scripts.stack import ServiceProcess, start_service
from tests.integration.test_gateway_process import DEAD_BACKENDS

THREADS = 2
STALLED = 3 * THREADS  # more stalled uploads than the gateway has threads
BODY_READ_TIMEOUT_S = 1.0


def start_small_gateway(log_dir: Path) -> ServiceProcess:
    """One worker with THREADS threads: a few stalled clients would take them all."""
    args = ["--workers", "1", "--threads", str(THREADS), "--body-read-timeout-s", str(BODY_READ_TIMEOUT_S)]
    return start_service("gateway", args=[*args, *DEAD_BACKENDS], log_dir=log_dir)


def stall_every_thread(
    gateway: ServiceProcess, open_stalled: Callable[[int], socket.socket]
) -> tuple[list[socket.socket], float, float]:
    """Opens more stalled connections than the gateway has threads, then checks /healthz is still
    answered: the stalled ones take the threads in turns of one timeout each before it gets one.
    Returns the stalled sockets, when they were opened and that budget."""
    budget_s = (STALLED // THREADS + 1) * BODY_READ_TIMEOUT_S + 3
    opened = time.monotonic()
    stalled = [open_stalled(gateway.port) for _ in range(STALLED)]
    with urllib.request.urlopen(gateway.url + "/healthz", timeout=budget_s) as response:
        assert response.status == 200
    assert time.monotonic() - opened < budget_s
    return stalled, opened, budget_s


def stalled_upload(port: int) -> socket.socket:
    """Sends a POST's headers and the first byte of a 100 kB body, then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(
        b"POST /v1/embed/text HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_stalled_uploads_get_408_and_others_are_still_served(tmp_path: Path) -> None:
    gateway = start_small_gateway(tmp_path)
    try:
        stalled, opened, budget_s = stall_every_thread(gateway, stalled_upload)
        for sock in stalled:
            reply = read_until_closed(sock)  # answered, then closed by the gateway
            sock.close()
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), reply[:200]
            assert json.loads(body)["error"] == {
                "code": 408,
                "status": "REQUEST_TIMEOUT",
                "message": f"the request body did not arrive within {BODY_READ_TIMEOUT_S:g} s",
            }
        assert time.monotonic() - opened < budget_s
    finally:
        assert gateway.stop() == 0, gateway.log_tail()


def stalled_head(port: int) -> socket.socket:
    """Sends half a request line and header, then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(b"POST /v1/embed/text HTTP/1.1\r\nHost: gatew")
    return sock


def test_stalled_request_heads_are_dropped_and_others_are_still_served(tmp_path: Path) -> None:
    gateway = start_small_gateway(tmp_path)
    try:
        stalled, opened, budget_s = stall_every_thread(gateway, stalled_head)
        for sock in stalled:
            assert read_until_closed(sock) == b""  # dropped: no request arrived to answer
            sock.close()
        # gunicorn's accept loop closes the dropped connections at its own pace (about 2 s each).
        assert time.monotonic() - opened < budget_s + 2 * STALLED
    finally:
        assert gateway.stop() == 0, gateway.log_tail()
    log = gateway.log_path.read_text()
    assert "a client stalled while sending its request" in log and "Traceback" not in log, gateway.log_tail()


def test_a_request_head_dribbled_byte_by_byte_is_dropped_after_the_budget(tmp_path: Path) -> None:
    gateway = start_small_gateway(tmp_path)
    head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Padding: " + b"x" * 40 + b"\r\n\r\n"
    try:
        sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
        opened = time.monotonic()
        sent = 0
        try:
            for byte in head:  # each wait well within the per-read bound, the whole far beyond it
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(BODY_READ_TIMEOUT_S / 4)
        except OSError:  # reset: the gateway dropped the connection
            pass
        assert sent < len(head), "the whole dribbled head was accepted"
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536) == b""  # dropped, never answered
        sock.close()
        elapsed = time.monotonic() - opened
        assert elapsed < 3 * BODY_READ_TIMEOUT_S + 2, elapsed
        # A well-behaved client on a kept-alive connection gets each head its own budget.
        polite = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=15)
        for _ in range(3):
            polite.request("GET", "/healthz")
            response = polite.getresponse()
            assert response.status == 200 and response.read() == b'{"status":"ok"}'
            time.sleep(BODY_READ_TIMEOUT_S * 0.7)  # idle between requests does not count
        polite.close()
    finally:
        assert gateway.stop() == 0, gateway.log_tail()
