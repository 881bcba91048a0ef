"""VisionEncoderService over gRPC: validates requests, prepares images, batches them, packs results.

Converts protos to plain Python values and back; never touches torch (the backends do).
Each request's images are decoded and preprocessed (``prepare_batch``) in a small thread pool
(Pillow and numpy release the GIL), so the event loop only routes requests; a bad image fails
its own request, never the batch.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from PIL import Image

from mmserve.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.common import tracing
from services.common.backend import ModelDescription
from services.common.encoder_service import EncoderService, check_item_count, label_scores, resolve_top_k
from services.common.errors import FailedPrecondition
from services.common.matrix import to_matrix
from services.common.metrics import ServiceMetrics
from services.common.pooling import mean_pooled
from services.common.settings import VisionSettings
from services.vision.backend import ImageClassification, ImageEmbedding, VisionModel
from services.vision.decoding import ImageLimits
from services.vision.preprocessing import prepare_batch
from services.vision.video import Sampling, VideoLimits, prepare_videos


def warmup_image() -> bytes:
    """A small synthetic PNG that goes through the whole decode -> preprocess -> model path."""
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(ramp, (64, 1)), np.tile(ramp[::-1], (64, 1)), np.full((64, 96), 128, np.uint8)], -1
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class VisionService(EncoderService, vision_pb2_grpc.VisionEncoderServiceServicer):
    """Tasks: ``embed`` (the main model) and ``classify`` (when the model has labels)."""

    modality = common_pb2.MODALITY_IMAGE
    name = "vision"
    service_names = (vision_pb2.DESCRIPTOR.services_by_name["VisionEncoderService"].full_name,)

    def __init__(self, settings: VisionSettings, metrics: ServiceMetrics, model: VisionModel) -> None:
        super().__init__(
            settings, metrics, {"embed": ImageEmbedding(model), "classify": ImageClassification(model)}
        )
        self._vision_settings = settings
        self._model = model
        self._limits = ImageLimits.from_settings(settings)
        self._video_limits = VideoLimits.from_settings(settings)
        self._decode_pool = ThreadPoolExecutor(
            max(1, settings.decode_threads), thread_name_prefix="image-decode"
        )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        vision_pb2_grpc.add_VisionEncoderServiceServicer_to_server(self, server)

    async def warm_up(self, descriptions: Mapping[str, ModelDescription]) -> None:
        prepared = await self._prepare([warmup_image()])
        await self.run("embed", prepared)
        if descriptions["classify"].labels:
            await self.run("classify", [(prepared[0], 1)])

    async def stop(self) -> None:
        await super().stop()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    async def _prepare(self, images: Sequence[bytes]) -> list[np.ndarray]:
        images = check_item_count(images, self._vision_settings.max_items_per_request, "images", "image")
        loop = asyncio.get_running_loop()
        with tracing.span("vision.decode_preprocess", **{"mmserve.items": len(images)}):
            batch = await loop.run_in_executor(
                self._decode_pool, prepare_batch, images, self._limits, self._model.transform
            )
        return list(batch)

    async def Embed(self, request: vision_pb2.EmbedImageRequest, context: grpc.aio.ServicerContext):
        description = self.description()
        prepared = await self._prepare(request.images)
        vectors = await self.run("embed", prepared, context.time_remaining())
        return vision_pb2.EmbedImageResponse(embeddings=to_matrix(vectors), model_id=description.model_id)

    async def EmbedVideo(self, request: vision_pb2.EmbedVideoRequest, context: grpc.aio.ServicerContext):
        """Sampled frames through the same transform and ``embed`` batcher as Embed's images."""
        description = self.description()
        s = self._vision_settings
        sampling = Sampling.of(
            request.num_frames, request.frames_per_second, s.video_frames, self._video_limits
        )
        videos = check_item_count(request.videos, s.max_videos_per_request, "videos", "video")
        loop = asyncio.get_running_loop()
        with tracing.span("vision.decode_sample_video", **{"mmserve.items": len(videos)}):
            clips = await loop.run_in_executor(
                self._decode_pool, prepare_videos, videos, self._video_limits, sampling, self._model.transform
            )
        frames = [frame for clip in clips for frame in clip.frames]
        # In chunks of one forward pass, so a long video shares the model fairly with other callers.
        chunks = [frames[i : i + s.max_batch_size] for i in range(0, len(frames), s.max_batch_size)]
        timeout_s = context.time_remaining()
        vectors = np.concatenate(await asyncio.gather(*(self.run("embed", c, timeout_s) for c in chunks)))
        blocks = np.split(vectors, np.cumsum([len(clip.frames) for clip in clips])[:-1])
        return vision_pb2.EmbedVideoResponse(
            embeddings=to_matrix(np.stack([mean_pooled(block) for block in blocks])),
            duration_s=[clip.duration_s for clip in clips],
            num_frames=[len(clip.frames) for clip in clips],
            frames=[
                vision_pb2.VideoFrames(embeddings=to_matrix(block), timestamps_s=clip.timestamps_s)
                for clip, block in zip(clips, blocks, strict=True)
            ]
            if request.include_frames
            else [],
            model_id=description.model_id,
        )

    async def Classify(self, request: vision_pb2.ClassifyImageRequest, context: grpc.aio.ServicerContext):
        description = self.description("classify")
        if not description.labels:
            raise FailedPrecondition(f"model {description.model_id} has no classifier head; use Embed")
        top_k = resolve_top_k(request.top_k, self._vision_settings.top_k, len(description.labels))
        prepared = await self._prepare(request.images)
        ranked = await self.run("classify", [(p, top_k) for p in prepared], context.time_remaining())
        return vision_pb2.ClassifyImageResponse(
            results=[vision_pb2.ImageClassification(labels=label_scores(labels)) for labels in ranked],
            model_id=description.model_id,
        )
