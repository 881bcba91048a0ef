"""The gateway's two HTTP servers (``MMSERVE_GATEWAY_SERVER``: gunicorn, granian) in front of one
text service, single-sentence ``/v1/embed/text`` at concurrency 8 and 32, alternating rounds in
the same run (the machine's speed drifts): items/s, p50, p99 and the gateway's CPU per request.

    python -m bench.servers [--rounds 3] [--requests 1500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.gateway import ROUTES, payloads, run_http_load
from bench.load import cpu_seconds, print_table
from gateway.__main__ import SERVERS
from scripts.stack import start_service

CONCURRENCIES = (8, 32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500, help="requests per round and concurrency")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="mmserve-bench-servers-"))
    bodies = payloads("text")
    text = start_service("text", log_dir=log_dir)
    dead = "127.0.0.1:1"
    backends = ["--text-address", text.address, "--vision-address", dead, "--fusion-address", dead]
    gateways = {}
    try:
        for server in SERVERS:
            gateways[server] = start_service("gateway", args=["--server", server, *backends], log_dir=log_dir)
            run_http_load(gateways[server].url + ROUTES["text"], bodies, 8, 200, "warm-up")
        rows = []
        for concurrency in CONCURRENCIES:
            for round_ in range(1, args.rounds + 1):
                measured = {}
                for server, gateway in gateways.items():
                    before = cpu_seconds(gateway.process.pid)
                    load = run_http_load(
                        gateway.url + ROUTES["text"], bodies, concurrency, args.requests, server
                    )
                    cpu_ms = (cpu_seconds(gateway.process.pid) - before) * 1000 / args.requests
                    measured[server] = load.items_per_s
                    rows.append(
                        [concurrency, round_, server, load.items_per_s, load.percentile_ms(50),
                         load.percentile_ms(99), f"{cpu_ms:.2f}", load.errors]
                    )  # fmt: skip
                rows[-1].append(f"{measured['granian'] / measured['gunicorn']:.2f}")
                rows[-2].append("")
    finally:
        for gateway in gateways.values():
            gateway.stop()
        text.stop()
    print_table(
        "gateway HTTP servers, /v1/embed/text, 1 sentence per request, one text service (alternating rounds)",
        ["concurrency", "round", "server", "items/s", "p50 ms", "p99 ms", "gateway CPU ms/request", "errors",
         "granian / gunicorn"],
        rows,
    )  # fmt: skip
    print(f"\nservice logs: {log_dir}")


if __name__ == "__main__":
    main()
