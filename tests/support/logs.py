"""What a service wrote to its log, checked as a log shipper reads it."""

from __future__ import annotations

import json

import pytest

from scripts.stack import ServiceProcess


def assert_json_lines(service: ServiceProcess) -> None:
    """Every line the service wrote is one JSON object of that service: a progress bar, a Python
    warning or a library's own handler would arrive as garbage (or break the record around it)."""
    lines = [line for line in service.log_path.read_text(errors="replace").splitlines() if line.strip()]
    assert lines, service.kind  # each logs at least that it is serving
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{service.kind} wrote a line that is not JSON: {line[:300]!r}")
        assert isinstance(record, dict) and record["service"] == service.kind, line[:300]
