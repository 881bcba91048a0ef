"""Encoder benchmark: items/s and p50/p99 through gRPC at concurrency 1, 8, 32, next to the
in-process forward throughput at the same batch sizes, measured in the same run.

    python -m bench.encoders [--requests 400] [--only text|vision|audio]

Audio items are 2 s clips (44.1 kHz stereo WAV: decoded, mixed, resampled, 4 YAMNet patches each).
"""

from __future__ import annotations

import argparse
import asyncio
import io

import grpc
import numpy as np
from PIL import Image

from bench.load import (
    audio_forward,
    measure_in_process,
    print_table,
    run_load,
    text_forward,
    vision_forward,
)
from mmserve.v1 import audio_pb2, audio_pb2_grpc, text_pb2, text_pb2_grpc, vision_pb2, vision_pb2_grpc
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


def sample_clips(count: int = 8, seconds: float = 2.0, rate: int = 44_100) -> list[bytes]:
    """Different 2 s stereo clips: tones over noise, as 16-bit WAV."""
    import soundfile

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    clips = []
    for i in range(count):
        left = 0.4 * np.sin(2 * np.pi * (220 * (i + 1)) * t) + 0.05 * rng.standard_normal(t.size)
        buffer = io.BytesIO()
        soundfile.write(buffer, np.stack([left, 0.8 * left], -1), rate, format="WAV", subtype="PCM_16")
        clips.append(buffer.getvalue())
    return clips


async def bench_service(kind: str, address: str, requests: int, payloads: list) -> list:
    async with grpc.aio.insecure_channel(address) as channel:
        if kind == "text":
            stub = text_pb2_grpc.TextEncoderServiceStub(channel)
            messages = [text_pb2.EmbedTextRequest(texts=[p]) for p in payloads]
        elif kind == "audio":
            stub = audio_pb2_grpc.AudioEncoderServiceStub(channel)
            messages = [audio_pb2.EmbedAudioRequest(clips=[p]) for p in payloads]
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
    parser.add_argument("--only", choices=("text", "vision", "audio"))
    args = parser.parse_args()
    inputs = {"text": SENTENCES, "vision": sample_images(), "audio": sample_clips()}
    forwards = {"text": text_forward, "vision": vision_forward, "audio": audio_forward}
    for kind in ("text", "vision", "audio"):
        if args.only and kind != args.only:
            continue
        requests = args.requests if kind == "text" else max(args.requests // 3, 100)
        service = start_service(kind)
        try:
            # The baseline runs while the service is idle, so neither slows the other.
            forward = forwards[kind]()
            payloads = inputs[kind]
            baselines = {c: measure_in_process(forward, payloads, c) for c in CONCURRENCIES}
            results = asyncio.run(bench_service(kind, service.address, requests, payloads))
        finally:
            service.stop()
        report(kind, results, baselines)


if __name__ == "__main__":
    main()
