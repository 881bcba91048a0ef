"""Encoder benchmark: items/s and p50/p99 through gRPC at concurrency 1, 8, 32, next to the
in-process forward throughput at the same batch sizes, measured in the same run.

    python -m bench.encoders [--requests 400] [--only text|vision]
"""

from __future__ import annotations

import argparse
import asyncio
import io

import grpc
import numpy as np
from PIL import Image

from bench.load import measure_in_process, print_table, run_load, text_forward, vision_forward
from mmserve.v1 import text_pb2, text_pb2_grpc, vision_pb2, vision_pb2_grpc
from scripts.stack import start_service

CONCURRENCIES = (1, 8, 32)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Serving models in production needs batching, deadlines and good metrics.",
    "A red circle sits on a white background next to a blue square.",
    "Kubernetes schedules the encoder pods onto nodes with free GPUs.",
    "She ordered a coffee and read the morning news before work.",
    "Heavy rain is expected across the north of the country tomorrow.",
    "The museum opens a new exhibition of modern sculpture in May.",
    "Latency percentiles matter more to users than average throughput.",
]


def sample_images(count: int = 8, side: int = 256) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


async def bench_service(kind: str, address: str, requests: int, payloads: list) -> list:
    async with grpc.aio.insecure_channel(address) as channel:
        if kind == "text":
            stub = text_pb2_grpc.TextEncoderServiceStub(channel)
            messages = [text_pb2.EmbedTextRequest(texts=[p]) for p in payloads]
        else:
            stub = vision_pb2_grpc.VisionEncoderServiceStub(channel)
            messages = [vision_pb2.EmbedImageRequest(images=[p]) for p in payloads]

        async def call(i: int) -> int:
            await stub.Embed(messages[i % len(messages)], timeout=60)
            return 1

        results = []
        for concurrency in CONCURRENCIES:
            count = requests if concurrency > 1 else max(requests // 4, 50)
            results.append(
                await run_load(
                    kind, call, concurrency=concurrency, requests=count, warmup_requests=concurrency
                )
            )
        return results


def report(kind: str, results: list, baselines: dict[int, float]) -> None:
    rows = []
    for r in results:
        baseline = baselines[r.concurrency]
        rows.append(
            [r.concurrency, r.items_per_s, r.percentile_ms(50), r.percentile_ms(99), baseline,
             f"{r.items_per_s / baseline:.2f}", r.errors]
        )  # fmt: skip
    print_table(
        f"{kind} encoder over gRPC (single-item requests) vs in-process forward at batch = concurrency",
        ["concurrency", "items/s", "p50 ms", "p99 ms", "in-process items/s", "ratio", "errors"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--only", choices=("text", "vision"))
    args = parser.parse_args()
    images = sample_images()
    for kind in ("text", "vision"):
        if args.only and kind != args.only:
            continue
        requests = args.requests if kind == "text" else max(args.requests // 3, 100)
        service = start_service(kind)
        try:
            # The baseline runs while the service is idle, so neither slows the other.
            if kind == "text":
                forward = text_forward()
                baselines = {c: measure_in_process(forward, SENTENCES, c) for c in CONCURRENCIES}
            else:
                forward = vision_forward()
                baselines = {c: measure_in_process(forward, images, c) for c in CONCURRENCIES}
            payloads = SENTENCES if kind == "text" else images
            results = asyncio.run(bench_service(kind, service.address, requests, payloads))
        finally:
            service.stop()
        report(kind, results, baselines)


if __name__ == "__main__":
    main()
