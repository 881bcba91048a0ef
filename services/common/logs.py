"""Structured JSON logs with the request id of the call being served.

Only metadata is logged (route, method, status, durations, ids): never request bodies, texts
or images.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
import uuid

REQUEST_ID_HEADER = "x-request-id"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

MAX_REQUEST_ID_LEN = 128


def sanitize_request_id(candidate: str | None) -> str:
    """Keeps a caller's id if it is short and printable; otherwise makes a new one."""
    if candidate and len(candidate) <= MAX_REQUEST_ID_LEN and candidate.isascii() and candidate.isprintable():
        return candidate
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        # A line written after its event (the gateway's deferred access log) carries the event's
        # time and request id itself.
        created = getattr(record, "event_time", record.created)
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(created % 1 * 1000):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Every line the process writes to stderr is one JSON object: log records, Python warnings
    (logger ``py.warnings``) and the model libraries' records too; their progress bars (drawn for
    terminals) are off."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # huggingface_hub and transformers read it at import
    route_library_logs()


def route_library_logs() -> None:
    """transformers writes its records through a stderr handler of its own, in its own format (a
    model's load report is a multi-line table); routed to the root logger they are JSON lines.
    Acts on the libraries already imported: called by configure_logging, and again where a
    service imports transformers later (a backend chosen by its settings)."""
    if (hub := sys.modules.get("huggingface_hub.utils")) is not None:
        hub.disable_progress_bars()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()
        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
