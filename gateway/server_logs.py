"""The HTTP servers' own log lines (start, worker boot and exit) in the app's JSON format."""

from __future__ import annotations

from gateway.worker import QuietStalledClients
from services.common.logs import JsonFormatter


def json_logging(level: str, server_logger: str) -> dict:
    """A logging dict config sending ``server_logger`` (the server's own logger) and the root logger
    to stderr as JSON lines."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": "gateway"}},
        "filters": {"stalled": {"()": QuietStalledClients}},
        "handlers": {"stderr": {**handler, "filters": ["stalled"]}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {server_logger: {"level": level.upper(), "handlers": ["stderr"], "propagate": False}},
    }
