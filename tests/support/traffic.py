"""Bounded background HTTP traffic that records every response: for fault and overload tests."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    finished: float
    status: int
    retry_after: str | None = None
    body: bytes = b""

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def json(self):
        return json.loads(self.body)


def post_json(
    url: str, payload: dict | None, timeout_s: float = 30.0, headers: dict | None = None
) -> Outcome:
    """POSTs ``payload`` as JSON (or GETs ``url`` when it is None) and records the outcome."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return Outcome(began, time.monotonic(), response.status, body=response.read())
    except urllib.error.HTTPError as error:
        return Outcome(began, time.monotonic(), error.code, error.headers.get("Retry-After"), error.read())
    except OSError:
        return Outcome(began, time.monotonic(), 0)  # connection refused / reset / client timeout


@dataclass
class Traffic:
    """``workers`` threads POST ``payload`` (GET if None) to ``url`` until stopped or ``max_seconds`` pass."""

    url: str
    payload: dict | None
    workers: int = 2
    max_seconds: float = 120.0
    pause_s: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.workers)]

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            outcome = post_json(self.url, self.payload)
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def since(self, moment: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= moment]

    def statuses(self) -> set[int]:
        with self._lock:
            return {o.status for o in self.outcomes}
