"""What each service writes is JSON lines, all of it (tests/support/logs.py). Checked on the
session's five services after the tests before this one have used them."""

from __future__ import annotations

from scripts.stack import ServiceProcess
from tests.support.logs import assert_json_lines


def test_every_line_each_service_writes_is_a_json_object(gateway_service: ServiceProcess, request) -> None:
    assert_json_lines(gateway_service)
    for name in ("fusion_service", "text_service", "vision_service", "audio_service"):
        assert_json_lines(request.getfixturevalue(name))
