"""What a service wrote to its log, checked as a log shipper reads it."""

from __future__ import annotations

import json
import re

import pytest

from scripts.stack import ServiceProcess

# gRPC's C core logs through absl in glog's format (``E1202 06:33:13.939002 1692 file.cc:3238] ...``),
# out of Python's reach; the README names it as the one exception.
_GRPC_CORE_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def assert_json_lines(service: ServiceProcess) -> None:
    """Every line the service wrote is one JSON object of that service: a progress bar, a Python
    warning or a library's own handler would arrive as garbage (or break the record around it)."""
    text = service.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip() and not _GRPC_CORE_LINE.match(line)]
    assert lines, service.kind  # each logs at least that it is serving
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{service.kind} wrote a line that is not JSON: {line[:300]!r}")
        assert isinstance(record, dict) and record["service"] == service.kind, line[:300]


def grpc_core_lines(service: ServiceProcess) -> list[str]:
    """The lines gRPC's C core wrote to the service's log itself."""
    text = service.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if _GRPC_CORE_LINE.match(line)]
