"""Encoders sharing cores: text and images at once through the gateway, beside each alone, per
CPU threading setup, measured in the same run and interleaved (the machine's speed drifts).

For every setup the whole stack restarts with that environment, then: lone text requests
(concurrency 1: p50 shows what spinning OpenMP threads buy), text alone at concurrency 32,
images alone at concurrency 4, and both at once. ``python -m bench.mixed [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from bench.gateway import payloads, run_http_load
from bench.load import LoadResult, print_table
from scripts.stack import SPIN_COUNT, ServiceProcess, start_service

# name -> environment of every service process. "lanes": forward passes at once per encoder,
# each on cpus / lanes intra-op threads (services/common/batcher.py).
_ONE_FORWARD = {"MMSERVE_TEXT_FORWARD_LANES": "1", "MMSERVE_VISION_FORWARD_LANES": "1"}
SETUPS: dict[str, dict[str, str | None]] = {
    "1 lane x 2 threads, spin (OpenMP default)": {
        "OMP_WAIT_POLICY": None,
        "GOMP_SPINCOUNT": None,
        **_ONE_FORWARD,
    },
    "1 lane x 2 threads, passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None, **_ONE_FORWARD},
    "2 lanes x 1 thread, passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "2 lanes x 1 thread, lone text and image passes on both CPUs, short spin": {
        "OMP_WAIT_POLICY": None,
        "GOMP_SPINCOUNT": SPIN_COUNT,
        "MMSERVE_TEXT_LONE_PASS_THREADS": "0",
        "MMSERVE_VISION_LONE_PASS_THREADS": "0",
    },
    # Lone image passes take both CPUs by default (VisionSettings.lone_pass_threads 0), text ones one.
    "2 lanes x 1 thread, short spin (default)": {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": SPIN_COUNT},
}
TEXT_ROUTE, IMAGE_ROUTE = "/v1/embed/text", "/v1/embed/image"


def start_encoders_and_gateway(env: dict[str, str | None], log_dir: Path) -> list[ServiceProcess]:
    """Text and vision with ``env``, loading in parallel, and a gateway in front (no fusion)."""
    encoders = [start_service(kind, env=env, log_dir=log_dir, wait=False) for kind in ("text", "vision")]
    for encoder in encoders:
        encoder.wait_ready(300)
    text, vision = encoders
    addresses = ["--text-address", text.address, "--vision-address", vision.address,
                 "--fusion-address", "127.0.0.1:1"]  # fmt: skip
    return [start_service("gateway", args=addresses, log_dir=log_dir), *encoders]


def measure_setup(env: dict[str, str | None], text_requests: int, log_dir: Path) -> dict[str, LoadResult]:
    services = start_encoders_and_gateway(env, log_dir)
    gateway = services[0]
    text_url, image_url = gateway.url + TEXT_ROUTE, gateway.url + IMAGE_ROUTE
    texts, images = payloads("text"), payloads("vision")
    try:
        run_http_load(text_url, texts, 8, 64, "warm-up")
        run_http_load(image_url, images, 4, 16, "warm-up")
        results = {
            "text c=1": run_http_load(text_url, texts, 1, max(text_requests // 10, 60), "text c=1"),
            "text c=32 alone": run_http_load(text_url, texts, 32, text_requests, "text alone"),
            "images c=4 alone": run_http_load(
                image_url, images, 4, max(text_requests // 10, 40), "images alone"
            ),
        }
        stop = threading.Event()
        image_result: list[LoadResult] = []
        image_thread = threading.Thread(
            target=lambda: image_result.append(
                run_http_load(image_url, images, 4, 10**9, "images", stop=stop)
            )
        )
        image_thread.start()
        results["text c=32 mixed"] = run_http_load(text_url, texts, 32, text_requests, "text mixed")
        stop.set()
        image_thread.join()
        results["images c=4 mixed"] = image_result[0]
        return results
    finally:
        for service in services:
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds over the setups.")
    parser.add_argument("--text-requests", type=int, default=1500)
    parser.add_argument("--setups", nargs="*", choices=list(SETUPS), default=list(SETUPS))
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="mmserve-bench-mixed-"))
    header = ["round", "setup", "text c=1", "text c=32 alone", "images c=4 alone", "text c=32 mixed",
              "images c=4 mixed", "errors"]  # fmt: skip
    title = "Text and images sharing 2 cores through the gateway: items/s / p50 ms / p99 ms"
    rows = []
    for round_number in range(1, args.rounds + 1):
        for name in args.setups:
            results = measure_setup(SETUPS[name], args.text_requests, log_dir)
            figures = [
                f"{r.items_per_s:.0f} / {r.percentile_ms(50):.1f} / {r.percentile_ms(99):.0f}"
                for r in results.values()
            ]
            rows.append([round_number, name, *figures, sum(r.errors for r in results.values())])
            print_table(title, header, rows[-1:])  # as it comes: a long run may be cut short
    print_table(title, header, rows)
    print(f"\nservice logs: {log_dir}")


if __name__ == "__main__":
    main()
