"""The gunicorn configuration the gateway runs with."""

from __future__ import annotations

import pytest

from gateway.__main__ import GatewayServer, NoAccessLogger
from services.common.settings import GatewaySettings


def test_gunicorn_builds_no_access_log_fields_for_a_log_nobody_writes(monkeypatch) -> None:
    server = GatewayServer(GatewaySettings(workers=1, threads=4))
    assert server.cfg.logger_class is NoAccessLogger
    logger = server.cfg.logger_class(server.cfg)
    # With our JSON log config gunicorn's base logger would compute every request's fields here.
    assert logger.access_log_enabled

    def no_fields(*_args):
        pytest.fail("access-log fields were built")

    monkeypatch.setattr(logger, "atoms", no_fields)
    logger.access(None, None, {}, None)


def test_an_unknown_http_server_is_refused_before_anything_starts() -> None:
    from gateway.__main__ import main

    with pytest.raises(SystemExit, match="gateway: unknown server 'nginx'; choose from gunicorn, granian"):
        main(["--server", "nginx"])
