"""gunicorn's gthread worker with a bound on reading a request's head.

gthread hands a connection to a worker thread once its first bytes arrive; from there the
request line and headers are read with blocking calls and no timeout, so a client that sends a
few bytes and stops would hold the thread for good. The kernel's receive timeout (SO_RCVTIMEO)
makes each of those reads give up after ``read_timeout_s`` (the bound a request body's reads
have): the thread drops the connection and returns to the pool. Python's own socket timeout
cannot do it, because gthread resets that (``setblocking``) just before reading; the kernel
option survives. Like the body's bound, it limits each wait for data, not the total.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from gunicorn.workers.gthread import ThreadWorker


class HeadTimeoutWorker(ThreadWorker):
    read_timeout_s: float = 10.0  # set from the settings in the master, before workers fork

    def handle(self, conn):
        if not conn.initialized:
            seconds = max(self.read_timeout_s, 0.001)
            timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        return super().handle(conn)


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
