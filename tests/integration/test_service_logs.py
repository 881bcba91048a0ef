"""What each service writes is JSON lines, all of it: a log shipper parses every line, and a
progress bar, a Python warning or a library's own print would arrive as garbage (or break the
record around it). Checked on the session's five services after the tests before this one have
used them."""

from __future__ import annotations

import json

import pytest

from scripts.stack import ServiceProcess


def test_every_line_each_service_writes_is_a_json_object(gateway_service: ServiceProcess, request) -> None:
    services = [gateway_service] + [
        request.getfixturevalue(name)
        for name in ("fusion_service", "text_service", "vision_service", "audio_service")
    ]
    for service in services:
        lines = [line for line in service.log_path.read_text(errors="replace").splitlines() if line.strip()]
        assert lines, service.kind  # each logs at least that it is serving
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{service.kind} wrote a line that is not JSON: {line[:300]!r}")
            assert isinstance(record, dict) and record["service"] == service.kind, line[:300]
