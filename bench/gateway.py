"""REST gateway benchmark: /v1/embed/text and /v1/embed/image at concurrency 1, 8, 32 (items/s,
p50, p99) through gateway -> gRPC encoder, next to, measured in the same run:

- the in-process forward (the model's ceiling at batch = concurrency), and
- a naive single-process Flask app that holds the model and runs one forward per request in
  the request thread (what a first prototype would do).

    python -m bench.gateway [--requests 300] [--only text|vision]

The client is lean on purpose (threads, one keep-alive http.client connection each), so that on a
2-core machine it takes little CPU from the servers it measures.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import numpy as np

from bench.encoders import SENTENCES, sample_images
from bench.load import LoadResult, measure_in_process, print_table
from scripts.stack import ServiceProcess, free_port, start_service

CONCURRENCIES = (1, 8, 32)
ROUTES = {"text": "/v1/embed/text", "vision": "/v1/embed/image"}


def payloads(kind: str) -> list[bytes]:
    """Single-item request bodies, pre-encoded so the client spends no CPU on JSON."""
    if kind == "text":
        return [json.dumps({"texts": [s]}).encode() for s in SENTENCES]
    return [json.dumps({"images": [base64.b64encode(b).decode()]}).encode() for b in sample_images()]


def run_http_load(url: str, bodies: list[bytes], concurrency: int, requests: int, label: str) -> LoadResult:
    """Closed loop: ``concurrency`` threads, each with one keep-alive connection, one request at a time."""
    parts = urlsplit(url)
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    headers = {"Content-Type": "application/json"}
    ready = threading.Barrier(concurrency + 1)

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        _post(connection, parts.path, bodies[0], headers)  # warm-up: opens the keep-alive connection
        ready.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            began = time.perf_counter()
            try:
                ok = _post(connection, parts.path, bodies[i % len(bodies)], headers)
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
                ok = False
            elapsed = time.perf_counter() - began
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    ready.wait()  # the clock starts once every connection is open
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    return LoadResult(label, concurrency, requests, len(latencies), errors[0], seconds, np.array(latencies))


def _post(connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> bool:
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status == 200


# --- the naive baseline: one Flask process, model in the request thread ---------------------------


def naive_app(kind: str):
    """Flask app with the model loaded in-process; each request runs its own forward."""
    from flask import Flask, jsonify, request

    app = Flask("naive")
    forward = _text_forward() if kind == "text" else _vision_forward()

    @app.post(ROUTES[kind])
    def embed():
        data = request.get_json()
        items = data["texts"] if kind == "text" else [base64.b64decode(s) for s in data["images"]]
        return jsonify({"embeddings": np.asarray(forward(items)).tolist()})

    return app


def _text_forward() -> Callable[[list], np.ndarray]:
    from services.text.embedding import TextEmbedder

    embedder = TextEmbedder()
    embedder.load()
    return lambda texts: embedder.embed(texts).vectors


def _vision_forward() -> Callable[[list], np.ndarray]:
    from services.common.settings import VisionSettings, load_settings
    from services.vision.backend import create_backend
    from services.vision.decoding import decode_image

    settings = load_settings(VisionSettings, [], {})
    backend = create_backend(settings)
    backend.load()

    def forward(images: list[bytes]) -> np.ndarray:
        # Decoding and preprocessing are per request in every path measured, so they count here too.
        return backend.embed(np.stack([backend.preprocess(decode_image(b, settings)) for b in images]))

    return forward


def serve_naive(kind: str, port: int) -> None:
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", port, naive_app(kind), threaded=True)


def start_naive(kind: str) -> tuple[object, str]:
    import subprocess

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway", "--serve-naive", kind, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"naive {kind} server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/")
            connection.getresponse().read()
            return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"naive {kind} server did not start")


# --- the run -------------------------------------------------------------------------------------


def bench_kind(kind: str, requests: int, log_dir) -> None:
    bodies = payloads(kind)
    forward = _text_forward() if kind == "text" else _vision_forward()
    items = SENTENCES if kind == "text" else sample_images()
    # The in-process ceiling runs first, while no server is busy, so neither slows the other.
    baselines = {c: measure_in_process(forward, items, c) for c in CONCURRENCIES}
    del forward

    encoder = start_service(kind, log_dir=log_dir)
    dead = "127.0.0.1:1"  # the route measured needs only this encoder
    addresses = {"text": dead, "vision": dead, "fusion": dead, kind: encoder.address}
    gateway: ServiceProcess | None = None
    try:
        gateway = start_service(
            "gateway",
            args=["--text-address", addresses["text"], "--vision-address", addresses["vision"],
                  "--fusion-address", addresses["fusion"], "--log-level", "WARNING"],
            log_dir=log_dir,
        )  # fmt: skip
        served = _measure(gateway.url + ROUTES[kind], bodies, requests, "gateway")
    finally:
        if gateway is not None:
            gateway.stop()
        encoder.stop()

    naive_process, naive_url = start_naive(kind)
    try:
        naive = _measure(naive_url + ROUTES[kind], bodies, requests, "naive")
    finally:
        naive_process.terminate()
        naive_process.wait(20)

    rows = []
    for result, simple in zip(served, naive, strict=True):
        c = result.concurrency
        rows.append(
            [c, result.items_per_s, result.percentile_ms(50), result.percentile_ms(99),
             simple.items_per_s, simple.percentile_ms(50), simple.percentile_ms(99), baselines[c],
             f"{result.items_per_s / simple.items_per_s:.2f}" if simple.items_per_s else "-",
             f"{result.items_per_s / baselines[c]:.2f}", result.errors + simple.errors]
        )  # fmt: skip
    print_table(
        f"{ROUTES[kind]}: gateway -> gRPC {kind} encoder vs naive in-process Flask vs in-process forward "
        "(single-item requests; forward at batch = concurrency)",
        ["concurrency", "gw items/s", "gw p50 ms", "gw p99 ms", "naive items/s", "naive p50 ms", "naive p99 ms",
         "forward items/s", "gw/naive", "gw/forward", "errors"],
        rows,
    )  # fmt: skip
    sys.stdout.flush()


def _measure(url: str, bodies: list[bytes], requests: int, label: str) -> list[LoadResult]:
    results = []
    for concurrency in CONCURRENCIES:
        count = requests if concurrency > 1 else max(requests // 3, 30)
        results.append(run_http_load(url, bodies, concurrency, count, label))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--only", choices=("text", "vision"))
    parser.add_argument("--serve-naive", choices=("text", "vision"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        serve_naive(args.serve_naive, args.port)
        return
    import tempfile
    from pathlib import Path

    log_dir = Path(tempfile.mkdtemp(prefix="mmserve-bench-gateway-"))
    for kind in ("text", "vision"):
        if args.only and kind != args.only:
            continue
        requests = args.requests if kind == "text" else max(args.requests // 3, 60)
        bench_kind(kind, requests, log_dir)
    print(f"\nservice logs: {log_dir}")


if __name__ == "__main__":
    main()
