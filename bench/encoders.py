"""Encoder benchmark: items/s and p50/p99 through gRPC at concurrency 1, 8, 32, next to the
in-process forward throughput at the same batch sizes (and at 32, the ceiling: the better of
batch 16 and 32), measured right before each level, and the CPU the service and the load
generator spent per request.

    python -m bench.encoders [--requests 400] [--only text|vision|audio]

Audio items are 2 s clips (44.1 kHz stereo WAV: decoded, mixed, resampled, 4 YAMNet patches each).
"""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image

from bench.load import (
    LoadResult,
    audio_forward,
    client_cpu_seconds,
    cpu_seconds,
    measure_in_process,
    print_table,
    run_load,
    text_forward,
    vision_forward,
)
from mmserve.v1 import audio_pb2, audio_pb2_grpc, text_pb2, text_pb2_grpc, vision_pb2, vision_pb2_grpc
from scripts.stack import ServiceProcess, start_service

CONCURRENCIES = (1, 8, 32)
CEILING_BATCHES = (16, 32)
# Single-sentence runs, fast enough to afford it: at least 40 rounds of each concurrency (the
# first and last round ramp up and down, so a short run at concurrency 32 reads low).
TEXT_ROUNDS = 40

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


@dataclass(frozen=True)
class Level:
    """One concurrency level, and the in-process rates measured right before it."""

    load: LoadResult
    in_process: dict[int, float]  # batch -> items/s
    service_cpu_ms: float  # per request
    client_cpu_ms: float  # per request: this process, the load generator

    @property
    def forward(self) -> float:
        """In-process items/s at batch = concurrency."""
        return self.in_process[self.load.concurrency]

    @property
    def ceiling(self) -> float | None:
        """The better of batch 16 and 32 (the encoders batch at most 32 by default), where measured."""
        rates = [self.in_process[b] for b in CEILING_BATCHES if b in self.in_process]
        return max(rates) if rates else None


def _stub_and_messages(kind: str, channel: grpc.aio.Channel, payloads: list) -> tuple[object, list]:
    if kind == "text":
        return text_pb2_grpc.TextEncoderServiceStub(channel), [
            text_pb2.EmbedTextRequest(texts=[p]) for p in payloads
        ]
    if kind == "audio":
        return audio_pb2_grpc.AudioEncoderServiceStub(channel), [
            audio_pb2.EmbedAudioRequest(clips=[p]) for p in payloads
        ]
    return vision_pb2_grpc.VisionEncoderServiceStub(channel), [
        vision_pb2.EmbedImageRequest(images=[p]) for p in payloads
    ]


async def bench_service(
    kind: str,
    service: ServiceProcess,
    requests: int,
    payloads: list,
    forward: Callable[[Sequence], object],
    min_rounds: int = 0,
) -> list[Level]:
    """Each concurrency in turn, with the in-process rates measured right before it, while the
    service is idle (the machine's speed drifts within minutes: a baseline measured once at the
    start would be compared with levels run in another window), and the CPU the service and this
    load generator spent on it."""
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub, messages = _stub_and_messages(kind, channel, payloads)

        async def call(i: int) -> int:
            await stub.Embed(messages[i % len(messages)], timeout=60)
            return 1

        levels = []
        for concurrency in CONCURRENCIES:
            batches = {concurrency, *(CEILING_BATCHES if concurrency == max(CONCURRENCIES) else ())}
            in_process = {b: measure_in_process(forward, payloads, b) for b in sorted(batches)}
            count = max(requests, min_rounds * concurrency) if concurrency > 1 else max(requests // 4, 50)
            for i in range(concurrency):  # warm-up, outside the CPU window
                await call(i)
            service_before, client_before = cpu_seconds(service.process.pid), client_cpu_seconds()
            load = await run_load(kind, call, concurrency=concurrency, requests=count)
            service_ms = (cpu_seconds(service.process.pid) - service_before) * 1000 / count
            client_ms = (client_cpu_seconds() - client_before) * 1000 / count
            levels.append(Level(load, in_process, service_ms, client_ms))
        return levels


def report(kind: str, levels: list[Level]) -> None:
    rows = []
    for level in levels:
        r, ceiling = level.load, level.ceiling
        rows.append(
            [r.concurrency, r.items_per_s, r.percentile_ms(50), r.percentile_ms(99), level.forward,
             f"{r.items_per_s / level.forward:.2f}", ceiling or "-", f"{r.items_per_s / ceiling:.2f}" if ceiling else "-",
             f"{level.service_cpu_ms:.2f}", f"{level.client_cpu_ms:.2f}", r.errors]
        )  # fmt: skip
    print_table(
        f"{kind} encoder over gRPC (single-item requests) vs in-process forward measured right before each "
        "level (at batch = concurrency; ceiling: the better of batch 16 and 32), CPU ms per request",
        ["concurrency", "items/s", "p50 ms", "p99 ms", "in-process items/s", "ratio", "ceiling items/s",
         "ratio to ceiling", "service CPU ms", "client CPU ms", "errors"],
        rows,
    )  # fmt: skip


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
            forward, rounds = forwards[kind](), TEXT_ROUNDS if kind == "text" else 0
            levels = asyncio.run(bench_service(kind, service, requests, inputs[kind], forward, rounds))
        finally:
            service.stop()
        report(kind, levels)


if __name__ == "__main__":
    main()
