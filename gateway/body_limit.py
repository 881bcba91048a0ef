"""The request body cap, enforced so that every client reads its 413, however it sends the body.

Werkzeug alone refuses a body whose Content-Length is over the cap without reading it, and cuts
a chunked one off at the cap (the view then parses truncated JSON: a 400, not a 413). Either
way the server then closes a connection whose request bytes are still arriving; the kernel
answers them with a reset, which also discards the 413 before a client that is still sending
gets to read it (measured: a 50 MB POST ended in a broken pipe after 3 ms).

``BodyLimit`` wraps the Flask app's WSGI callable:

- a body without Content-Length (chunked) is read into memory up to the cap, so the app sees an
  ordinary body of known length, or learns it is too large;
- for a body over the cap the app answers the 413 (``BODY_ERROR`` in the environ; it is logged,
  counted and shaped like every other error), and before the response goes out the rest of the
  body is read and discarded in 64 KiB pieces (memory stays flat), up to ``DRAIN_FACTOR`` times
  the cap in all and within the request's deadline. A client sending more than that has its
  connection closed (it may see a reset instead of the 413).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from gateway.errors import ApiError, too_large

BODY_ERROR = "mmserve.body_error"  # environ key: the ApiError the app answers instead of reading the body
DRAIN_FACTOR = 4  # read and discard oversized bodies up to this many times the cap (128 MiB by default)
_CHUNK_BYTES = 64 * 1024
_LOGGER = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class BodyLimit:
    """WSGI middleware: see the module docstring."""

    def __init__(self, app: WsgiApp, max_body_bytes: int, drain_s: float) -> None:
        self._app = app
        self._max_bytes = max_body_bytes
        self._drain_bytes = DRAIN_FACTOR * max_body_bytes
        self._drain_s = drain_s

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        began = time.monotonic()
        stream = environ["wsgi.input"]
        length = _content_length(environ)
        received = 0
        # wsgi.input_terminated: the server ends the stream at the body's end (gunicorn always, werkzeug's
        # server for chunked bodies), so reading a body of unknown length cannot block past it.
        if length is None and environ.get("wsgi.input_terminated"):
            try:
                body, received = _read_up_to(stream, self._max_bytes + 1)
            except Exception as exc:  # the client went away or broke the chunked framing
                environ[BODY_ERROR] = ApiError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request body could not be read ({type(exc).__name__})",
                )
                return self._app(environ, start_response)
            if received <= self._max_bytes:
                environ["wsgi.input"] = body
                environ["CONTENT_LENGTH"] = str(received)
                environ.pop("HTTP_TRANSFER_ENCODING", None)  # now an ordinary body of known length
                return self._app(environ, start_response)
            del body
        elif length is None or length <= self._max_bytes:
            return self._app(environ, start_response)
        environ[BODY_ERROR] = too_large(self._max_bytes)
        environ["wsgi.input"] = io.BytesIO()
        environ["CONTENT_LENGTH"] = "0"
        response = self._app(environ, start_response)
        # The response is only written once this returns, so the client is still sending while this
        # reads; a declared length beyond the bound is not worth reading: that connection closes.
        if length is None or length <= self._drain_bytes:
            self._drain(stream, received, began + self._drain_s)
        return response

    def _drain(self, stream: Any, received: int, deadline: float) -> None:
        try:
            while received < self._drain_bytes and time.monotonic() < deadline:
                data = stream.read(min(_CHUNK_BYTES, self._drain_bytes - received))
                if not data:
                    return
                received += len(data)
        except Exception:  # the client's failures while its body is discarded do not change the answer
            _LOGGER.debug("reading an oversized request body failed", exc_info=True)


def _content_length(environ: dict[str, Any]) -> int | None:
    try:
        return max(int(environ["CONTENT_LENGTH"]), 0)
    except (KeyError, ValueError):
        return None


def _read_up_to(stream: Any, limit: int) -> tuple[io.BytesIO, int]:
    """At most ``limit`` bytes of ``stream``, read in pieces, in a buffer positioned at its start."""
    body = io.BytesIO()
    received = 0
    while received < limit:
        data = stream.read(min(_CHUNK_BYTES, limit - received))
        if not data:
            break
        body.write(data)
        received += len(data)
    body.seek(0)
    return body, received
