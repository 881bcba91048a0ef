"""Bookkeeping that need not happen before the response, done in batches off the request thread.

Done on the request thread, a request's metric updates and its access-log line cost the gateway
~0.2-0.4 ms of CPU per request (docs/performance.md): each multiprocess metric update
writes a shared file, each log line builds a record and writes it, and both ran cold between the
request's other work. Queued as plain tuples and applied here in a loop, they cost a fraction of
that. What they record lags by at most ``interval_s``; the metrics endpoint applies its own
worker's queue before it answers, and whatever is queued when a worker exits is applied on its
way out.

The thread starts with the first queued item and stops after ``idle_s`` with nothing to do, so an
idle gateway (or a test's many apps) keeps no thread waking up.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing.util
import threading
import time
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)


class DeferredWork:
    def __init__(self, interval_s: float = 0.1, idle_s: float = 2.0) -> None:
        self._interval_s = interval_s
        self._idle_rounds = max(1, round(idle_s / interval_s))
        self._queue: collections.deque[tuple[Callable[..., object], tuple]] = collections.deque()
        self._lock = threading.Lock()
        self._running = False
        # Runs at a normal interpreter exit (gunicorn's workers) and at a multiprocessing
        # child's exit (granian's workers), before the workers' metrics are marked dead.
        # It holds the queue, not this object, which may still be collected (and drained then).
        multiprocessing.util.Finalize(self, _drain, args=(self._queue,), exitpriority=10)

    def later(self, work: Callable[..., object], *args: object) -> None:
        """Queues ``work(*args)``; safe from any thread, and cheap (one append)."""
        self._queue.append((work, args))
        if not self._running:
            self._start()

    def run_pending(self) -> int:
        """Does everything queued so far, now, on the calling thread; returns how many."""
        return _drain(self._queue)

    def _start(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._run, name="gateway-deferred-work", daemon=True).start()

    def _run(self) -> None:
        idle = 0
        while True:
            time.sleep(self._interval_s)
            if self.run_pending():
                idle = 0
                continue
            idle += 1
            if idle < self._idle_rounds:
                continue
            with self._lock:
                self._running = False
            # A caller that saw the thread running queued its item before the flag fell: do it now.
            # One that queues after sees the flag down and starts a new thread.
            self.run_pending()
            return


def _drain(queue: collections.deque) -> int:
    done = 0
    while True:
        try:
            work, args = queue.popleft()
        except IndexError:
            return done
        try:
            work(*args)
        except Exception:  # one bad item must not stop the others, nor the thread
            _LOGGER.exception("deferred work failed")
        done += 1
