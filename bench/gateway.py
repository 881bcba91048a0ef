"""REST gateway benchmark: /v1/embed/text and /v1/embed/image at concurrency 1, 8, 32 (items/s,
p50, p99) through gateway -> gRPC encoder, with one item per request (and, for text, also 8, to
show the per-request cost amortised), next to, measured in the same run:

- the in-process forward of the same model (batch = concurrency x items up to the encoder's 32,
  and the ceiling, the better of batch 16 and 32), measured right before each concurrency level,
  and the latency of one forward at batch 1, and
- a naive single-process Flask app that holds the model and runs one forward per request in
  the request thread (what a first prototype would do).

    python -m bench.gateway [--requests 300] [--only text|vision]

Each served row also says where the CPU went, in ms per request: the gateway (gunicorn master
and workers), the encoder service (or the naive app) and the load generator itself. The client
is lean on purpose (one keep-alive http.client connection per thread, bodies encoded up front)
so that on a 2-core machine it takes little CPU from the servers it measures; its own cost is
the "client" column.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.encoders import SENTENCES, sample_images
from bench.load import (
    LoadResult,
    client_cpu_seconds,
    cpu_seconds,
    measure_in_process,
    print_table,
    text_forward,
    vision_forward,
)
from scripts.stack import free_port, start_service

CONCURRENCIES = (1, 8, 32)
# Single-sentence runs, fast enough to afford it: at least 40 rounds of each concurrency.
SINGLE_TEXT_ROUNDS = 40
ROUTES = {"text": "/v1/embed/text", "vision": "/v1/embed/image"}


def payloads(kind: str, items_per_request: int = 1) -> list[bytes]:
    """Request bodies, encoded once so the client spends no CPU on JSON."""
    if kind == "text":
        pool, field = SENTENCES, "texts"
    else:
        pool, field = [base64.b64encode(b).decode() for b in sample_images()], "images"
    return [
        json.dumps({field: [pool[(i + j) % len(pool)] for j in range(items_per_request)]}).encode()
        for i in range(len(pool))
    ]


@dataclass(frozen=True)
class Measured:
    load: LoadResult
    cpu_ms: dict[str, float]  # per request, by process role
    in_process: dict[int, float] = field(default_factory=dict)  # batch -> items/s, just before this level


# --- the load generator --------------------------------------------------------------------------


def run_http_load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    requests: int,
    label: str,
    items_per_request: int = 1,
    stop: threading.Event | None = None,
) -> LoadResult:
    """Closed loop: ``concurrency`` threads, each with one keep-alive connection, one request at a
    time, until ``requests`` were sent or ``stop`` is set."""
    parts = urlsplit(url)
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    headers = {"Content-Type": "application/json"}
    ready = threading.Barrier(concurrency + 1)

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        _post(connection, parts.path, bodies[0], headers)  # opens the keep-alive connection
        ready.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None or (stop is not None and stop.is_set()):
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
    items = len(latencies) * items_per_request
    return LoadResult(label, concurrency, requests, items, errors[0], seconds, np.array(latencies))


def _post(connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> bool:
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status == 200


def measure(
    url: str,
    bodies: list[bytes],
    requests: int,
    label: str,
    servers: dict[str, int],
    items_per_request: int,
    min_rounds: int = 0,
    in_process: Callable[[int], dict[int, float]] | None = None,
) -> list[Measured]:
    """Each concurrency in turn, with the CPU each server process (and the client) spent on it.
    Each level sends at least ``min_rounds`` x its concurrency requests: the first and last round
    ramp up and down, so a short run at concurrency 32 reads low. ``in_process(concurrency)``, the
    in-process rates to compare the level with, is measured right before it, while the servers are
    idle: the machine's speed drifts within minutes, so a baseline measured once at the start
    would be compared with levels run in another window."""
    results = []
    run_http_load(url, bodies, 8, 32, "warm-up")
    for concurrency in CONCURRENCIES:
        baseline = in_process(concurrency) if in_process is not None else {}
        sent = max(requests, min_rounds * concurrency)
        before = {role: cpu_seconds(pid) for role, pid in servers.items()}
        client_before = client_cpu_seconds()
        load = run_http_load(url, bodies, concurrency, sent, label, items_per_request)
        cpu = {role: (cpu_seconds(pid) - before[role]) * 1000 / sent for role, pid in servers.items()}
        cpu["client"] = (client_cpu_seconds() - client_before) * 1000 / sent
        results.append(Measured(load, cpu, baseline))
    return results


# --- the in-process model ------------------------------------------------------------------------


def forward_p50_ms(forward: Callable[[Sequence], object], items: Sequence, seconds: float = 2.0) -> float:
    """Median latency of one forward pass at batch 1: what a request costs with no hop at all."""
    latencies = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or len(latencies) < 20:
        began = time.perf_counter()
        forward([items[i % len(items)]])
        latencies.append(time.perf_counter() - began)
        i += 1
    return float(np.median(latencies) * 1000)


def grpc_p50_ms(kind: str, address: str, items: Sequence, requests: int = 100) -> float:
    """Median latency of one single-item gRPC call straight to the encoder (no gateway)."""
    import grpc

    from mmserve.v1 import text_pb2, text_pb2_grpc, vision_pb2, vision_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        if kind == "text":
            call = text_pb2_grpc.TextEncoderServiceStub(channel).Embed
            messages = [text_pb2.EmbedTextRequest(texts=[item]) for item in items]
        else:
            call = vision_pb2_grpc.VisionEncoderServiceStub(channel).Embed
            messages = [vision_pb2.EmbedImageRequest(images=[item]) for item in items]
        latencies = []
        for i in range(requests + 10):
            began = time.perf_counter()
            call(messages[i % len(messages)], timeout=60)
            if i >= 10:  # the first calls open the connection
                latencies.append(time.perf_counter() - began)
    return float(np.median(latencies) * 1000)


# --- the naive baseline: one Flask process, model in the request thread ---------------------------


def naive_app(kind: str):
    """Flask app with the model loaded in-process; each request runs its own forward."""
    from flask import Flask, jsonify, request

    app = Flask("naive")
    forward = text_forward() if kind == "text" else vision_forward()

    @app.post(ROUTES[kind])
    def embed():
        data = request.get_json()
        items = data["texts"] if kind == "text" else [base64.b64decode(s) for s in data["images"]]
        vectors = forward(items)
        return jsonify({"embeddings": np.asarray(getattr(vectors, "vectors", vectors)).tolist()})

    return app


def start_naive(kind: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway", "--serve-naive", kind, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"naive {kind} server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/")
            connection.getresponse().read()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise TimeoutError(f"naive {kind} server did not start")


# --- the run -------------------------------------------------------------------------------------


def rounds(kind: str, items_per_request: int) -> int:
    return SINGLE_TEXT_ROUNDS if kind == "text" and items_per_request == 1 else 0


def bench_kind(kind: str, requests: int, items_per_request: Sequence[int], log_dir: Path) -> None:
    forward = text_forward() if kind == "text" else vision_forward()
    items = SENTENCES if kind == "text" else sample_images()
    forward_ms = forward_p50_ms(forward, items)

    def in_process(k: int) -> Callable[[int], dict[int, float]]:
        # The batch a level's requests could fill, and the ceiling: the better of 16 and 32 (the
        # encoder batches at most 32 items, its default max_batch_size), whatever the concurrency.
        return lambda concurrency: {
            b: measure_in_process(forward, items, b) for b in sorted({min(concurrency * k, 32), 16, 32})
        }

    served: dict[int, list[Measured]] = {}
    naive: dict[int, list[Measured]] = {}
    encoder = start_service(kind, log_dir=log_dir)
    dead = "127.0.0.1:1"  # the route measured needs only this encoder
    addresses = {"text": dead, "vision": dead, "fusion": dead, kind: encoder.address}
    gateway = None
    try:
        gateway = start_service(
            "gateway",
            args=["--text-address", addresses["text"], "--vision-address", addresses["vision"],
                  "--fusion-address", addresses["fusion"]],
            log_dir=log_dir,
        )  # fmt: skip
        servers = {"gateway": gateway.process.pid, "encoder": encoder.process.pid}
        direct_ms = grpc_p50_ms(kind, encoder.address, items)
        for k in items_per_request:
            served[k] = measure(
                gateway.url + ROUTES[kind], payloads(kind, k), requests // k, "gateway", servers, k,
                min_rounds=rounds(kind, k), in_process=in_process(k),
            )  # fmt: skip
    finally:
        if gateway is not None:
            gateway.stop()
        encoder.stop()

    naive_process, naive_url = start_naive(kind)
    try:
        for k in items_per_request:
            naive[k] = measure(
                naive_url + ROUTES[kind],
                payloads(kind, k),
                requests // k,
                "naive",
                {"naive": naive_process.pid},
                k,
                min_rounds=rounds(kind, k),
            )
    finally:
        naive_process.terminate()
        naive_process.wait(20)

    for k in items_per_request:
        report(kind, k, served[k], naive[k])
    through = served[items_per_request[0]][0].load.percentile_ms(50)
    print(
        f"\nconcurrency 1, p50: forward {forward_ms:.2f} ms in-process; {direct_ms:.2f} ms straight to the "
        f"encoder over gRPC; {through:.2f} ms through HTTP -> gateway -> gRPC -> encoder. The HTTP + gateway "
        f"hop adds {through - direct_ms:.2f} ms, the encoder service {direct_ms - forward_ms:.2f} ms, "
        f"{through - forward_ms:.2f} ms in all."
    )
    sys.stdout.flush()


def report(kind: str, k: int, served: list[Measured], naive: list[Measured]) -> None:
    per_request = f"{k} item{'s' * (k > 1)} per request"
    rows = []
    for ours, simple in zip(served, naive, strict=True):
        r, s, c = ours.load, simple.load, ours.load.concurrency
        best = ours.in_process[min(c * k, 32)]
        top = max(ours.in_process[16], ours.in_process[32])
        rows.append(
            [c, r.items_per_s, r.percentile_ms(50), r.percentile_ms(99), s.items_per_s, s.percentile_ms(50),
             s.percentile_ms(99), best, top, f"{r.items_per_s / s.items_per_s:.2f}" if s.items_per_s else "-",
             f"{r.items_per_s / best:.2f}", f"{r.items_per_s / top:.2f}", r.errors + s.errors]
        )  # fmt: skip
    print_table(
        f"{ROUTES[kind]}, {per_request}: gateway -> gRPC {kind} encoder vs naive in-process Flask vs in-process "
        "forward, measured right before each level (at batch = min(concurrency x items, 32); ceiling: the "
        "better of batch 16 and 32)",
        ["concurrency", "gw items/s", "gw p50 ms", "gw p99 ms", "naive items/s", "naive p50 ms", "naive p99 ms",
         "forward items/s", "ceiling items/s", "gw/naive", "gw/forward", "gw/ceiling", "errors"],
        rows,
    )  # fmt: skip
    cpu = [
        [m.cpu_ms["gateway"], m.cpu_ms["encoder"], m.cpu_ms["client"], n.cpu_ms["naive"], n.cpu_ms["client"]]
        for m, n in zip(served, naive, strict=True)
    ]
    print_table(
        f"{ROUTES[kind]}, {per_request}: CPU ms per request (2 cores = 2000 ms of CPU per second)",
        ["concurrency", "gateway", "encoder service", "client (gw run)", "naive app", "client (naive run)"],
        [[c, *(f"{v:.2f}" for v in row)] for c, row in zip(CONCURRENCIES, cpu, strict=True)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level (text)")
    parser.add_argument("--only", choices=("text", "vision"))
    parser.add_argument("--serve-naive", choices=("text", "vision"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_naive:
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", args.port, naive_app(args.serve_naive), threaded=True)
        return
    log_dir = Path(tempfile.mkdtemp(prefix="mmserve-bench-gateway-"))
    for kind in ("text", "vision"):
        if args.only and kind != args.only:
            continue
        # Single items show the per-request cost; 8 texts per request show it amortised.
        requests = args.requests if kind == "text" else max(args.requests // 3, 60)
        bench_kind(kind, requests, (1, 8) if kind == "text" else (1,), log_dir)
    print(f"\nservice logs: {log_dir}")


if __name__ == "__main__":
    main()
