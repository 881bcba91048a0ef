"""The gateway as a real gunicorn process with several workers (no models: backends are unreachable)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from scripts.stack import start_service
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
        assert requests_counted(gateway.url, "/v1/embed/text", "503") == 20
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
