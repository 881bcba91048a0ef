"""What tracing costs: /v1/embed/text through two identical stacks (gateway + text service), one
with tracing off (the default) and one exporting every span over OTLP/HTTP to a sink in this
process, measured in alternating rounds (off, on, off, on) so the machine's drift hits both.

    python -m bench.tracing [--requests 300] [--rounds 2]

Off installs nothing on the request path; the "on" rows show what a sampled trace costs.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from bench.gateway import payloads, run_http_load
from bench.load import cpu_seconds, print_table
from scripts.stack import ServiceProcess, start_service

CONCURRENCIES = (1, 8)


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them (the cost measured is the services')."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def start_stack(env: dict[str, str], log_dir: Path) -> tuple[ServiceProcess, ServiceProcess]:
    text = start_service("text", env=env, log_dir=log_dir)
    dead = "127.0.0.1:1"  # the route measured needs only the text service
    gateway = start_service(
        "gateway",
        args=["--text-address", text.address, "--vision-address", dead, "--fusion-address", dead],
        env=env,
        log_dir=log_dir,
    )
    return text, gateway


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    log_dir = Path(tempfile.mkdtemp(prefix="mmserve-bench-tracing-"))
    variants = {
        "off": {"OTEL_EXPORTER_OTLP_ENDPOINT": None},
        "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500"},
    }
    stacks = {name: start_stack(env, log_dir) for name, env in variants.items()}
    bodies = payloads("text")
    rows: dict[tuple[str, int], list] = {}
    try:
        for _, gateway in stacks.values():
            run_http_load(gateway.url + "/v1/embed/text", bodies, 8, 64, "warm-up")
        for _ in range(args.rounds):
            for concurrency in CONCURRENCIES:
                for name, (text, gateway) in stacks.items():
                    pids = (text.process.pid, gateway.process.pid)
                    before = sum(cpu_seconds(pid) for pid in pids)
                    load = run_http_load(
                        gateway.url + "/v1/embed/text", bodies, concurrency, args.requests, name
                    )
                    cpu_ms = (sum(cpu_seconds(pid) for pid in pids) - before) * 1000 / args.requests
                    rows.setdefault((name, concurrency), []).append((load, cpu_ms))
    finally:
        for text, gateway in stacks.values():
            gateway.stop()
            text.stop()
        sink.shutdown()

    table = []
    for concurrency in CONCURRENCIES:
        off_rate = np.median([load.items_per_s for load, _ in rows[("off", concurrency)]])
        for name in variants:
            runs = rows[(name, concurrency)]
            rate = np.median([load.items_per_s for load, _ in runs])
            table.append(
                [
                    name,
                    concurrency,
                    f"{rate:.0f}",
                    f"{np.median([load.percentile_ms(50) for load, _ in runs]):.2f}",
                    f"{np.median([load.percentile_ms(99) for load, _ in runs]):.2f}",
                    f"{np.median([cpu for _, cpu in runs]):.2f}",
                    f"{rate / off_rate:.2f}",
                ]
            )
    print_table(
        f"Tracing off vs on, /v1/embed/text, 1 sentence per request, {args.rounds} alternating rounds (medians)",
        ["tracing", "concurrency", "items/s", "p50 ms", "p99 ms", "CPU ms/request (gateway+text)", "vs off"],
        table,
    )


if __name__ == "__main__":
    main()
