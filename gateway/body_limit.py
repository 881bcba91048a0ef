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

A body is also bounded in time (``read_timeout_s``), so clients that send headers and then stall
or dribble the body cannot hold the worker threads (gthread gives each request a thread until
its body is read): the socket gets that read timeout (the longest silence), and each read of the
body checks the total deadline. A late body is answered 408 and its connection closed. The
socket's timeout is set while the app runs and restored before the response is written: a slow
reader of a large response is not cut off by it. Within one read, each recv() waits at most the
timeout, so a client dribbling a byte just inside it stretches that one read (as nginx's
``client_body_timeout``, which is also a per-read bound).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from werkzeug.exceptions import RequestTimeout

from gateway.errors import ApiError, too_large

BODY_ERROR = "mmserve.body_error"  # environ key: the ApiError the app answers instead of reading the body
DRAIN_FACTOR = 4  # read and discard oversized bodies up to this many times the cap (128 MiB by default)
_CHUNK_BYTES = 64 * 1024
_LOGGER = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class BodyLimit:
    """WSGI middleware: see the module docstring."""

    def __init__(self, app: WsgiApp, max_body_bytes: int, drain_s: float, read_timeout_s: float) -> None:
        self._app = app
        self._max_bytes = max_body_bytes
        self._drain_bytes = DRAIN_FACTOR * max_body_bytes
        self._drain_s = drain_s
        self._read_timeout_s = read_timeout_s

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = _content_length(environ)
        if not length and "HTTP_TRANSFER_ENCODING" not in environ:
            return self._limited(environ, start_response, length)  # no body (GET): nothing to wait for
        sock = environ.get("gunicorn.socket")
        environ["wsgi.input"] = _DeadlineInput(
            environ["wsgi.input"], sock, time.monotonic() + self._read_timeout_s, self._read_timeout_s
        )
        if sock is None:  # another server (tests, werkzeug's): the deadline between reads still holds
            return self._limited(environ, start_response, length)
        prior = sock.gettimeout()
        sock.settimeout(self._read_timeout_s)
        try:
            return self._limited(environ, start_response, length)
        finally:
            _restore_timeout(sock, prior)

    def _limited(
        self, environ: dict[str, Any], start_response: Callable, length: int | None
    ) -> Iterable[bytes]:
        began = time.monotonic()
        stream = environ["wsgi.input"]
        received = 0
        # wsgi.input_terminated: the server ends the stream at the body's end (gunicorn always, werkzeug's
        # server for chunked bodies), so reading a body of unknown length cannot block past it.
        if length is None and environ.get("wsgi.input_terminated"):
            try:
                body, received = _read_up_to(stream, self._max_bytes + 1)
            except RequestTimeout as exc:
                environ[BODY_ERROR] = ApiError(408, exc.description)
                return self._app(environ, start_response)
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


class _DeadlineInput:
    """``wsgi.input`` whose reads raise 408 (werkzeug's RequestTimeout, answered in the error
    shape by the app's handler) once the body is late, or when the socket's timeout expires."""

    def __init__(self, stream: Any, sock: socket.socket | None, deadline: float, timeout_s: float) -> None:
        self._stream = stream
        self._sock = sock
        self._deadline = deadline
        self._timeout_s = timeout_s

    def read(self, size: int = -1) -> bytes:
        return self._within_deadline(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._within_deadline(self._stream.readline, size)

    def _within_deadline(self, read: Callable[[int], bytes], size: int) -> bytes:
        if time.monotonic() > self._deadline:
            raise self._late()
        try:
            return read(size)
        except TimeoutError:
            raise self._late() from None

    def _late(self) -> RequestTimeout:
        # The rest of the body will not be read: the connection can't carry another request, and
        # its read side is shut so the server closes it at once instead of draining a stalled client.
        if self._sock is not None:
            with contextlib.suppress(OSError):  # already closed by the client
                self._sock.shutdown(socket.SHUT_RD)
        return RequestTimeout(f"the request body did not arrive within {self._timeout_s:g} s")


def _restore_timeout(sock: socket.socket, timeout: float | None) -> None:
    with contextlib.suppress(OSError):  # the socket was closed meanwhile
        sock.settimeout(timeout)


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
