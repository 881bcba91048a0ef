"""AudioEncoderService over gRPC: validates requests, prepares clips, batches segments, packs results.

Converts protos to plain Python values and back; never touches onnxruntime or torch (the
backends do). Each request's clips are decoded, resampled and cut into segments
(``prepare_clips``) in a small thread pool, so the event loop only routes requests; a bad clip
fails its own request, never a batch. A clip's segments go to the batcher in chunks of at most
``max_batch_size``, so a ten-minute clip shares forward passes fairly with short ones.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from mmserve.v1 import audio_pb2, audio_pb2_grpc, common_pb2
from services.audio.backend import (
    AudioClassification,
    AudioEmbedding,
    AudioModel,
    pool_embeddings,
    pool_scores,
    top_labels,
)
from services.audio.decoding import AudioLimits
from services.audio.pipeline import PreparedClip, prepare_clips, split_rows
from services.common.backend import ModelDescription
from services.common.encoder_service import EncoderService, check_item_count
from services.common.errors import FailedPrecondition, InvalidInput
from services.common.matrix import to_matrix
from services.common.metrics import ServiceMetrics
from services.common.pooling import l2_normalised
from services.common.settings import AudioSettings


def warmup_clip(seconds: float = 1.5, sample_rate_hz: int = 22_050) -> bytes:
    """A small synthetic WAV (a chirp over noise, stereo, not at 16 kHz) that goes through the
    whole decode -> mix -> resample -> features -> model path."""
    import soundfile

    t = np.arange(int(seconds * sample_rate_hz)) / sample_rate_hz
    chirp = 0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t)
    noise = 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([chirp + noise, chirp - noise], -1), sample_rate_hz, format="WAV")
    return buffer.getvalue()


class AudioService(EncoderService, audio_pb2_grpc.AudioEncoderServiceServicer):
    """Tasks: ``embed`` (the main model) and ``classify`` (when the model has labels)."""

    modality = common_pb2.MODALITY_AUDIO
    name = "audio"
    service_names = (audio_pb2.DESCRIPTOR.services_by_name["AudioEncoderService"].full_name,)

    def __init__(self, settings: AudioSettings, metrics: ServiceMetrics, model: AudioModel) -> None:
        super().__init__(
            settings, metrics, {"embed": AudioEmbedding(model), "classify": AudioClassification(model)}
        )
        self._audio_settings = settings
        self._model = model
        self._limits = AudioLimits.from_settings(settings)
        self._decode_pool = ThreadPoolExecutor(
            max(1, settings.decode_threads), thread_name_prefix="audio-decode"
        )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        audio_pb2_grpc.add_AudioEncoderServiceServicer_to_server(self, server)

    async def warm_up(self, descriptions: Mapping[str, ModelDescription]) -> None:
        prepared = await self._prepare([warmup_clip()])
        await self._run_segments("embed", prepared)
        if descriptions["classify"].labels:
            await self._run_segments("classify", prepared)

    async def stop(self) -> None:
        await super().stop()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    async def _prepare(self, clips: Sequence[bytes]) -> list[PreparedClip]:
        clips = check_item_count(clips, self._audio_settings.max_items_per_request, "clips", "clip")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, prepare_clips, clips, self._limits, self._model)

    async def _run_segments(
        self, task: str, clips: Sequence[PreparedClip], timeout_s: float | None = None
    ) -> np.ndarray:
        """Every segment of every clip through ``task``'s batcher; rows in segment order."""
        items = [segment.data for clip in clips for segment in clip.segments]
        size = self._audio_settings.max_batch_size
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        results = await asyncio.gather(
            *(self.run(task, c, timeout_s) for c in chunks), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return np.concatenate([np.asarray(r) for r in results])

    async def Embed(self, request: audio_pb2.EmbedAudioRequest, context: grpc.aio.ServicerContext):
        description = self.description()
        clips = await self._prepare(request.clips)
        blocks = split_rows(await self._run_segments("embed", clips, context.time_remaining()), clips)
        segments = []
        if request.include_segments:
            segments = [
                audio_pb2.AudioSegments(
                    embeddings=to_matrix(l2_normalised(block)),
                    start_s=[s.start_s for s in clip.segments],
                    end_s=[min(s.end_s, clip.duration_s) for s in clip.segments],
                )
                for clip, block in zip(clips, blocks, strict=True)
            ]
        return audio_pb2.EmbedAudioResponse(
            embeddings=to_matrix(np.stack([pool_embeddings(block) for block in blocks])),
            duration_s=[clip.duration_s for clip in clips],
            segments=segments,
            model_id=description.model_id,
        )

    async def Classify(self, request: audio_pb2.ClassifyAudioRequest, context: grpc.aio.ServicerContext):
        description = self.description("classify")
        if not description.labels:
            raise FailedPrecondition(f"model {description.model_id} has no classifier head; use Embed")
        if request.top_k < 0:
            raise InvalidInput(
                f"top_k must be >= 0 (0 means the default, {self._audio_settings.top_k}); got {request.top_k}"
            )
        top_k = min(request.top_k or self._audio_settings.top_k, len(description.labels))
        clips = await self._prepare(request.clips)
        blocks = split_rows(await self._run_segments("classify", clips, context.time_remaining()), clips)
        return audio_pb2.ClassifyAudioResponse(
            results=[
                audio_pb2.AudioClassification(
                    labels=[
                        common_pb2.LabelScore(label=label, score=score)
                        for label, score in top_labels(pool_scores(block), description.labels, top_k)
                    ]
                )
                for block in blocks
            ],
            model_id=description.model_id,
        )
