"""VisionEncoderService over gRPC: validates requests, decodes images, batches them, packs results.

Converts protos to plain Python values and back; never touches torch (the backends do).
Decoding and preprocessing run in a small thread pool (Pillow and numpy release the GIL), so
the event loop only routes requests; a bad image fails its own request, never the batch.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from PIL import Image

from mmserve.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.common.backend import ModelDescription
from services.common.batcher import DynamicBatcher
from services.common.errors import FailedPrecondition, InvalidInput, NotReady
from services.common.matrix import to_matrix
from services.common.metrics import ServiceMetrics
from services.common.settings import VisionSettings
from services.vision.backend import LabelScores, VisionBackend
from services.vision.decoding import ImageLimits
from services.vision.preprocessing import prepare_image


def warmup_image() -> bytes:
    """A small synthetic PNG that goes through the whole decode -> preprocess -> model path."""
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(ramp, (64, 1)), np.tile(ramp[::-1], (64, 1)), np.full((64, 96), 128, np.uint8)], -1
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def validate_images(images: Sequence[bytes], settings: VisionSettings) -> list[bytes]:
    """Enforces the per-request limits; per-image checks happen while decoding."""
    if not images:
        raise InvalidInput("images must contain at least one image")
    if len(images) > settings.max_items_per_request:
        raise InvalidInput(
            f"too many images: {len(images)} (limit {settings.max_items_per_request} per request)"
        )
    return list(images)


class VisionService(vision_pb2_grpc.VisionEncoderServiceServicer):
    service_names = (vision_pb2.DESCRIPTOR.services_by_name["VisionEncoderService"].full_name,)

    def __init__(self, settings: VisionSettings, metrics: ServiceMetrics, backend: VisionBackend) -> None:
        self._settings = settings
        self._metrics = metrics
        self._backend = backend
        self._limits = ImageLimits.from_settings(settings)
        self._decode_pool = ThreadPoolExecutor(
            max(1, settings.decode_threads), thread_name_prefix="image-decode"
        )
        self._embed_batcher: DynamicBatcher | None = None
        self._classify_batcher: DynamicBatcher | None = None
        self._description: ModelDescription | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        vision_pb2_grpc.add_VisionEncoderServiceServicer_to_server(self, server)

    async def start(self) -> None:
        s = self._settings
        description = await asyncio.to_thread(self._backend.load)
        batching = {
            "model": description.model_id,
            "metrics": self._metrics,
            "max_batch_size": s.max_batch_size,
            "max_wait_ms": s.max_wait_ms,
            "max_queue_size": s.max_queue_size,
        }
        self._embed_batcher = DynamicBatcher(self._embed_batch, task="embed", **batching)
        self._embed_batcher.start()
        if description.labels:
            self._classify_batcher = DynamicBatcher(self._classify_batch, task="classify", **batching)
            self._classify_batcher.start()
        if s.warmup:
            prepared = await self._prepare([warmup_image()])
            await self._embed_batcher.submit(prepared)
            if self._classify_batcher is not None:
                await self._classify_batcher.submit([(prepared[0], 1)])
        self._description = description

    async def stop(self) -> None:
        for batcher in (self._embed_batcher, self._classify_batcher):
            if batcher is not None:
                await batcher.stop()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    def _ready(self) -> ModelDescription:
        if self._description is None:
            raise NotReady("the vision model is still loading")
        return self._description

    # Run on the batchers' worker threads.
    def _embed_batch(self, items: list[np.ndarray]) -> np.ndarray:
        return self._backend.embed(np.stack(items))

    def _classify_batch(self, items: list[tuple[np.ndarray, int]]) -> list[LabelScores]:
        top_k = max(k for _, k in items)
        ranked = self._backend.classify(np.stack([pixels for pixels, _ in items]), top_k)
        return [labels[:k] for labels, (_, k) in zip(ranked, items, strict=True)]

    # Run on the decode pool.
    def _prepare_one(self, index: int, data: bytes) -> np.ndarray:
        try:
            return prepare_image(data, self._limits, self._backend.transform)
        except InvalidInput as exc:
            raise InvalidInput(f"images[{index}]: {exc}") from None

    async def _prepare(self, images: Sequence[bytes]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(self._decode_pool, self._prepare_one, i, data)
            for i, data in enumerate(images)
        ]
        # Wait for all, so no failed decode is left with an exception nobody retrieves.
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def Embed(self, request: vision_pb2.EmbedImageRequest, context: grpc.aio.ServicerContext):
        description = self._ready()
        prepared = await self._prepare(validate_images(request.images, self._settings))
        vectors = await self._embed_batcher.submit(prepared, context.time_remaining())
        return vision_pb2.EmbedImageResponse(embeddings=to_matrix(vectors), model_id=description.model_id)

    async def Classify(self, request: vision_pb2.ClassifyImageRequest, context: grpc.aio.ServicerContext):
        description = self._ready()
        if self._classify_batcher is None:
            raise FailedPrecondition(f"model {description.model_id} has no classifier head; use Embed")
        if request.top_k < 0:
            raise InvalidInput(
                f"top_k must be >= 0 (0 means the default, {self._settings.top_k}); got {request.top_k}"
            )
        top_k = min(request.top_k or self._settings.top_k, len(description.labels))
        prepared = await self._prepare(validate_images(request.images, self._settings))
        ranked = await self._classify_batcher.submit([(p, top_k) for p in prepared], context.time_remaining())
        return vision_pb2.ClassifyImageResponse(
            results=[
                vision_pb2.ImageClassification(
                    labels=[common_pb2.LabelScore(label=label, score=score) for label, score in labels]
                )
                for labels in ranked
            ],
            model_id=description.model_id,
        )

    async def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        d = self._ready()
        return common_pb2.ModelInfo(
            model_id=d.model_id,
            revision=d.revision,
            embedding_dim=d.embedding_dim,
            modality=common_pb2.MODALITY_IMAGE,
            device=d.device,
            dtype=d.dtype,
            max_batch_size=self._settings.max_batch_size,
            num_labels=len(d.labels),
        )
