"""gunicorn's gthread worker with a time budget for reading each request's head.

gthread hands a connection to a worker thread once its first bytes arrive; from there the
request line and headers are read with blocking calls and no timeout, so a client that sends a
few bytes and stops, or dribbles one byte at a time, would hold the thread for as long as it
likes. Here the whole head must arrive within ``read_timeout_s`` (like nginx's
``client_header_timeout``): before each read of the head, the kernel's receive timeout
(SO_RCVTIMEO) is set to what is left of that budget, and a head still incomplete when it runs
out drops the connection, returning the thread to the pool. Python's own socket timeout cannot
do it, because gthread resets that (``setblocking``) just before reading; the kernel option
survives. Once the app runs, each read of the body waits at most ``read_timeout_s`` and the
body as a whole is bounded by the request deadline (gateway/body_limit.py).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time

from gunicorn.workers.gthread import ThreadWorker


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    seconds = max(seconds, 0.001)
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)


class HeadDeadlineSocket:
    """A connection's socket as gthread and its parser see it: while a request head is being read,
    each ``recv`` waits at most what is left of the head's budget; everything else is the socket's."""

    def __init__(self, sock: socket.socket, read_timeout_s: float) -> None:
        self._sock = sock
        self._read_timeout_s = read_timeout_s
        self._head_deadline: float | None = None

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def start_head(self) -> None:
        self._head_deadline = time.monotonic() + self._read_timeout_s

    def end_head(self) -> None:
        self._head_deadline = None
        _set_receive_timeout(self._sock, self._read_timeout_s)

    def recv(self, size: int, *flags: int) -> bytes:
        if self._head_deadline is not None:
            remaining = self._head_deadline - time.monotonic()
            if remaining <= 0:
                raise OSError(errno.EAGAIN, "the request head did not arrive in time")
            _set_receive_timeout(self._sock, remaining)
        return self._sock.recv(size, *flags)


class HeadTimeoutWorker(ThreadWorker):
    read_timeout_s: float = 10.0  # set from the settings in the master, before workers fork

    def handle(self, conn):
        if not conn.initialized:  # before the parser is built on conn.sock (kept for keep-alive)
            conn.sock = HeadDeadlineSocket(conn.sock, self.read_timeout_s)
        conn.sock.start_head()
        return super().handle(conn)

    def handle_request(self, req, conn):
        conn.sock.end_head()  # the head is parsed: the app reads the body
        return super().handle_request(req, conn)


class QuietStalledClients(logging.Filter):
    """A client that stalled mid-request is an expected event, not a server error: one warning
    line instead of gunicorn's traceback for the timed-out read."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OSError) and error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "a client stalled while sending its request; connection closed",
                (),
                None,
                None,
            )
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
