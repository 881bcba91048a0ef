"""Fusion benchmark: fused Embed and Predict (one text + one image per request) through gRPC at
concurrency 1, 8, 32, next to the two encoders' own Embed latencies measured in the same run.

    python -m bench.fusion [--requests 200] [--strategy concat_mlp]

Starts text, vision and fusion (default models) as processes, serves a head of the chosen
strategy built for those encoders (its weights are random: latency does not depend on them),
and stops everything at the end. At concurrency 1 the calls are interleaved request by request
(text, image, both directly in parallel, fused Embed, fused Predict), so every kind is measured
under the same conditions. Fusion overhead = fused p50 - (text p50 + image p50); since fusion
calls the encoders in parallel, the overhead over a client calling both in parallel itself is
printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.encoders import SENTENCES, sample_images
from bench.load import LoadResult, print_table, run_load
from mmserve.v1 import (
    common_pb2,
    fusion_pb2,
    fusion_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from scripts.stack import ServiceProcess, start_service
from services.fusion.heads import save_head
from services.fusion.strategies import CLASSIFICATION_STRATEGIES, build_model

CONCURRENCIES = (1, 8, 32)
HEAD = "bench"
DEADLINE_S = 60.0


def write_head(
    heads_dir: Path, strategy: str, text: common_pb2.ModelInfo, image: common_pb2.ModelInfo
) -> None:
    module = build_model(strategy, text.embedding_dim, image.embedding_dim, {}, num_outputs=2)
    save_head(
        heads_dir / HEAD,
        module,
        strategy=strategy,
        input_dims={"text": text.embedding_dim, "image": image.embedding_dim},
        config={},
        encoders={
            "text": {"model_id": text.model_id, "revision": text.revision},
            "image": {"model_id": image.model_id, "revision": image.revision},
        },
        labels=("no", "yes"),
    )


def model_info(service: ServiceProcess) -> common_pb2.ModelInfo:
    with grpc.insecure_channel(service.address) as channel:
        stub_class = (
            text_pb2_grpc.TextEncoderServiceStub
            if service.kind == "text"
            else vision_pb2_grpc.VisionEncoderServiceStub
        )
        return stub_class(channel).GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)


def wait_for_head(fusion: fusion_pb2_grpc.FusionServiceStub, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(h.name == HEAD for h in fusion.ListHeads(fusion_pb2.ListHeadsRequest(), timeout=5).heads):
            return
        time.sleep(0.2)
    raise TimeoutError("the fusion service did not load the benchmark head")


class Calls:
    """One request of each kind, by index into the sample texts and images."""

    def __init__(self, channels: dict[str, grpc.aio.Channel], images: list[bytes]) -> None:
        self.text = text_pb2_grpc.TextEncoderServiceStub(channels["text"])
        self.vision = vision_pb2_grpc.VisionEncoderServiceStub(channels["vision"])
        self.fusion = fusion_pb2_grpc.FusionServiceStub(channels["fusion"])
        self.images = images

    def _input(self, i: int) -> fusion_pb2.MultimodalInput:
        return fusion_pb2.MultimodalInput(
            text=SENTENCES[i % len(SENTENCES)], image=self.images[i % len(self.images)]
        )

    async def text_embed(self, i: int) -> int:
        await self.text.Embed(
            text_pb2.EmbedTextRequest(texts=[SENTENCES[i % len(SENTENCES)]]), timeout=DEADLINE_S
        )
        return 1

    async def image_embed(self, i: int) -> int:
        await self.vision.Embed(
            vision_pb2.EmbedImageRequest(images=[self.images[i % len(self.images)]]), timeout=DEADLINE_S
        )
        return 1

    async def direct_parallel(self, i: int) -> int:
        """What fusion does downstream, done by the client itself: both encoders at once."""
        await asyncio.gather(self.text_embed(i), self.image_embed(i))
        return 1

    async def fused_embed(self, i: int) -> int:
        await self.fusion.Embed(
            fusion_pb2.FusionEmbedRequest(inputs=[self._input(i)], head=HEAD), timeout=DEADLINE_S
        )
        return 1

    async def fused_predict(self, i: int) -> int:
        await self.fusion.Predict(
            fusion_pb2.PredictRequest(inputs=[self._input(i)], head=HEAD), timeout=DEADLINE_S
        )
        return 1

    def kinds(self) -> dict:
        return {
            "text Embed": self.text_embed,
            "image Embed": self.image_embed,
            "text + image, client in parallel": self.direct_parallel,
            "fused Embed": self.fused_embed,
            "fused Predict": self.fused_predict,
        }


async def interleaved(kinds: dict, requests: int) -> dict[str, LoadResult]:
    """Concurrency 1, one request of each kind in turn, so slow drifts hit every kind alike."""
    for call in kinds.values():
        for i in range(5):
            await call(i)
    latencies: dict[str, list[float]] = {name: [] for name in kinds}
    errors = dict.fromkeys(kinds, 0)
    began = time.perf_counter()
    for i in range(requests):
        for name, call in kinds.items():
            start = time.perf_counter()
            try:
                await call(i)
            except grpc.RpcError:
                errors[name] += 1
                continue
            latencies[name].append(time.perf_counter() - start)
    seconds = time.perf_counter() - began
    results = {}
    for name, values in latencies.items():
        busy = float(np.sum(values)) or seconds  # items/s of this kind alone, not of the round
        results[name] = LoadResult(name, 1, requests, len(values), errors[name], busy, np.array(values))
    return results


async def measure(
    addresses: dict[str, str], images: list[bytes], requests: int
) -> dict[int, dict[str, LoadResult]]:
    channels = {name: grpc.aio.insecure_channel(address) for name, address in addresses.items()}
    try:
        kinds = Calls(channels, images).kinds()
        results = {1: await interleaved(kinds, max(requests // 2, 50))}
        for concurrency in CONCURRENCIES[1:]:
            results[concurrency] = {
                name: await run_load(
                    name, call, concurrency=concurrency, requests=requests, warmup_requests=concurrency
                )
                for name, call in kinds.items()
            }
        return results
    finally:
        for channel in channels.values():
            await channel.close()


def report(results: dict[int, dict[str, LoadResult]], strategy: str) -> None:
    rows = []
    for concurrency, by_kind in results.items():
        encoders_p50 = by_kind["text Embed"].percentile_ms(50) + by_kind["image Embed"].percentile_ms(50)
        for name, r in by_kind.items():
            rows.append(
                [concurrency, name, r.items_per_s, f"{r.percentile_ms(50):.2f}", f"{r.percentile_ms(99):.2f}",
                 f"{encoders_p50:.2f}", r.errors]
            )  # fmt: skip
    print_table(
        f"fusion ({strategy} head, 1 text + 1 image per request) vs the encoders' own Embed, same run",
        ["concurrency", "call", "items/s", "p50 ms", "p99 ms", "text p50 + image p50 ms", "errors"],
        rows,
    )
    c1 = results[1]
    encoders_sum = c1["text Embed"].percentile_ms(50) + c1["image Embed"].percentile_ms(50)
    parallel = c1["text + image, client in parallel"].percentile_ms(50)
    print("\n## fusion overhead at concurrency 1 (p50)")
    for name in ("fused Embed", "fused Predict"):
        fused = c1[name].percentile_ms(50)
        print(
            f"- {name}: {fused:.2f} ms; - (text + image) = {fused - encoders_sum:+.2f} ms; "
            f"- both called in parallel by the client = {fused - parallel:+.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per call kind and concurrency")
    parser.add_argument("--strategy", default="concat_mlp", choices=CLASSIFICATION_STRATEGIES)
    args = parser.parse_args()
    images = sample_images()
    started: list[ServiceProcess] = []
    with tempfile.TemporaryDirectory(prefix="mmserve-bench-heads-") as heads_dir:
        try:
            text = start_service("text")
            started.append(text)
            vision = start_service("vision")
            started.append(vision)
            write_head(Path(heads_dir), args.strategy, model_info(text), model_info(vision))
            fusion = start_service(
                "fusion",
                args=[
                    "--text-address",
                    text.address,
                    "--vision-address",
                    vision.address,
                    "--heads-dir",
                    heads_dir,
                ],
            )
            started.append(fusion)
            with grpc.insecure_channel(fusion.address) as channel:
                wait_for_head(fusion_pb2_grpc.FusionServiceStub(channel))
            addresses = {"text": text.address, "vision": vision.address, "fusion": fusion.address}
            results = asyncio.run(measure(addresses, images, args.requests))
        finally:
            for service in reversed(started):
                service.stop()
    report(results, args.strategy)


if __name__ == "__main__":
    main()
