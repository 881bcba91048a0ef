"""How much request data one gateway worker handles at once.

A request's heap cost grows with its body (JSON parsing, base64 decoding and the protobuf copy
take about 3.5x the body: ~115 MiB for a 32 MiB body), so concurrency is budgeted in body bytes,
not requests: past the budget a request gets 429 with Retry-After instead of pushing the worker
past its memory limit. Small requests are never refused for one another's sake, and one request
is always admitted when nothing else is in flight, whatever its size.
"""

from __future__ import annotations

import threading


class InFlightBudget:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()

    def admit(self, nbytes: int) -> bool:
        with self._lock:
            if self._used and self._used + nbytes > self._max_bytes:
                return False
            self._used += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes

    @property
    def used(self) -> int:
        return self._used
