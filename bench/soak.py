"""Soak test: moderate mixed text and image traffic through the gateway for a fixed time,
reporting throughput, errors and the memory growth of every process.

    python -m bench.soak --duration-s 600   (make soak)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

from PIL import Image

from scripts.procfs import tree_rss_bytes
from scripts.stack import Stack, start_stack


@dataclass(frozen=True)
class SoakReport:
    seconds: float
    requests: int
    statuses: dict[int, int]
    rss_growth_mb: dict[str, float]
    rss_after_mb: dict[str, float]

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)

    def __str__(self) -> str:
        lines = [
            f"duration {self.seconds:.0f} s, {self.requests} requests, {self.requests / self.seconds:.1f} req/s, "
            f"errors {self.errors}, statuses {dict(sorted(self.statuses.items()))}",
            "| process | RSS after (MB) | growth (MB) |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {self.rss_after_mb[k]:.0f} | {v:+.1f} |" for k, v in self.rss_growth_mb.items()]
        return "\n".join(lines)


def _image_payload() -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (20, 120, 200)).save(buffer, format="JPEG")
    return {"images": [base64.b64encode(buffer.getvalue()).decode()]}


def _post(url: str, payload: dict) -> int:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _rss_mb(stack: Stack) -> dict[str, float]:
    return {s.kind: tree_rss_bytes(s.process.pid) / 2**20 for s in stack.services}


def soak(stack: Stack, duration_s: float, concurrency: int = 4, warmup_s: float = 3.0) -> SoakReport:
    routes = [
        (stack.gateway.url + "/v1/embed/text", {"texts": ["a soak test keeps the service busy for a while"]}),
        (stack.gateway.url + "/v1/embed/image", _image_payload()),
    ]
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def worker(index: int, until: float, record: bool) -> None:
        url, payload = routes[index % len(routes)]
        while time.monotonic() < until:
            status = _post(url, payload)
            if record:
                with lock:
                    statuses[status] += 1

    def run(seconds: float, record: bool) -> None:
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=worker, args=(i, until, record)) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    run(warmup_s, record=False)  # allocator pools and caches settle before the baseline
    before = _rss_mb(stack)
    began = time.monotonic()
    run(duration_s, record=True)
    seconds = time.monotonic() - began
    after = _rss_mb(stack)
    return SoakReport(
        seconds=seconds,
        requests=sum(statuses.values()),
        statuses=dict(statuses),
        rss_growth_mb={k: after[k] - before[k] for k in after},
        rss_after_mb=after,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    stack = start_stack()
    try:
        print(soak(stack, args.duration_s, args.concurrency))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
