"""The gateway as a real gunicorn process with several workers (no models: backends are unreachable)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.stack import start_service
from tests.support.polling import eventually
from tests.support.traffic import post_json

DEAD = "127.0.0.1:1"
DEAD_BACKENDS = ["--text-address", DEAD, "--vision-address", DEAD, "--fusion-address", DEAD]


def requests_counted(url: str, route: str, status: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        wanted = {"route": route, "status": status}
        return sum(
            s.value
            for f in families
            for s in f.samples
            if s.name == "mmserve_http_requests_total" and wanted.items() <= s.labels.items()
        )


def test_metrics_add_up_across_workers_and_sigterm_exits_cleanly(tmp_path: Path) -> None:
    gateway = start_service(
        "gateway", args=["--workers", "2", "--threads", "4", *DEAD_BACKENDS], log_dir=tmp_path
    )
    try:
        time.sleep(1.0)  # let the second worker boot too, so requests spread over both
        outcomes = [
            post_json(gateway.url + "/v1/embed/text", {"texts": ["x"]}, timeout_s=5) for _ in range(20)
        ]
        assert {o.status for o in outcomes} == {503}
        assert all(o.retry_after == "1" and b"UNAVAILABLE" in o.body for o in outcomes)
        assert max(o.seconds for o in outcomes) < 2.0  # a dead backend is a fast failure, not a hang
        # One scrape sees every worker's requests, whichever worker answers it.
        counted = eventually(
            lambda: requests_counted(gateway.url, "/v1/embed/text", "503"), lambda n: n >= 20
        )
        assert counted == 20
    finally:
        assert gateway.stop() == 0, gateway.log_tail()


def test_sigterm_right_after_start_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM while a worker is still booting: no boot error, exit status 0."""
    for _ in range(2):
        gateway = start_service("gateway", args=["--workers", "2", *DEAD_BACKENDS], log_dir=tmp_path)
        assert gateway.stop() == 0, gateway.log_tail()
        assert "Exception in worker process" not in gateway.log_path.read_text()


def test_logs_are_json_lines_with_request_ids_and_never_bodies(tmp_path: Path) -> None:
    gateway = start_service("gateway", args=DEAD_BACKENDS, log_dir=tmp_path)
    try:
        secret = "a private sentence that must never reach a log"
        outcome = post_json(
            gateway.url + "/v1/embed/text", {"texts": [secret]}, headers={"X-Request-ID": "log-test-1"}
        )
        assert outcome.status == 503
        post_json(gateway.url + "/v1/embed/text", {"texts": 5})  # a 400 is logged too
    finally:
        assert gateway.stop() == 0
    lines = [json.loads(line) for line in gateway.log_path.read_text().splitlines() if line.strip()]
    assert {line["service"] for line in lines} == {"gateway"}  # gunicorn's own lines too
    (logged,) = [line for line in lines if line.get("request_id") == "log-test-1"]
    assert {k: logged[k] for k in ("route", "method", "status")} == {
        "route": "/v1/embed/text",
        "method": "POST",
        "status": 503,
    }
    assert logged["duration_ms"] >= 0
    assert any(line.get("status") == 400 for line in lines)
    assert secret not in gateway.log_path.read_text()


MIB = 1024 * 1024
TOO_LARGE = {
    "error": {
        "code": 413,
        "status": "PAYLOAD_TOO_LARGE",
        "message": f"the request body is larger than {32 * MIB} bytes",  # the default cap
    }
}


def json_text_body(size: int) -> Iterator[bytes]:
    """An OpenAI embeddings request of about ``size`` bytes, produced 1 MiB at a time (never held whole)."""
    yield b'{"model": "m", "input": "'
    for _ in range(size // MIB):
        yield b"a" * MIB
    yield b'"}'


def json_text_length(size: int) -> int:
    return sum(len(piece) for piece in (b'{"model": "m", "input": "', b'"}')) + size // MIB * MIB


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_50_mb_body_gets_its_413_and_the_connection_stays_usable(tmp_path: Path, chunked: bool) -> None:
    gateway = start_service("gateway", args=DEAD_BACKENDS, log_dir=tmp_path)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if not chunked:
            headers["Content-Length"] = str(json_text_length(50 * MIB))
        began = time.monotonic()
        connection.request(
            "POST", "/v1/embeddings", json_text_body(50 * MIB), headers, encode_chunked=chunked
        )
        response = connection.getresponse()
        seconds = time.monotonic() - began
        assert (response.status, json.loads(response.read())) == (413, TOO_LARGE)
        print(f"50 MB body ({'chunked' if chunked else 'Content-Length'}): 413 read after {seconds:.2f} s")
        # The body was read to its end, so the connection is still in step for the next request.
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        assert gateway.stop() == 0, gateway.log_tail()


def test_a_body_far_beyond_the_bound_ends_with_a_closed_connection_not_a_hang(tmp_path: Path) -> None:
    """Over 4x the cap the gateway stops reading: it answers and closes (the client may see a reset)."""
    gateway = start_service("gateway", args=DEAD_BACKENDS, log_dir=tmp_path)
    try:
        for chunked in (False, True):
            connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
            headers = {"Content-Type": "application/json"}
            if not chunked:
                headers["Content-Length"] = str(json_text_length(1024 * MIB))
            began = time.monotonic()
            try:
                connection.request(
                    "POST", "/v1/embeddings", json_text_body(1024 * MIB), headers, encode_chunked=chunked
                )
                status = connection.getresponse().status
            except OSError:  # reset or broken pipe while still sending
                status = None
            finally:
                connection.close()
            assert status in (413, None) and time.monotonic() - began < 15, (chunked, status)
        # The worker is free again.
        assert post_json(gateway.url + "/v1/embed/text", {"texts": ["x"]}, timeout_s=5).status == 503
    finally:
        assert gateway.stop() == 0, gateway.log_tail()
