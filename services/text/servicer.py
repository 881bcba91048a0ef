"""TextEncoderService over gRPC: validates requests, batches them, packs the results.

Converts protos to plain Python values and back; never touches torch (the backends do).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from mmserve.v1 import common_pb2, text_pb2, text_pb2_grpc
from services.common.backend import ModelDescription
from services.common.batcher import DynamicBatcher
from services.common.errors import InvalidInput, NotReady
from services.common.matrix import to_matrix
from services.common.metrics import ServiceMetrics
from services.common.settings import TextSettings

WARMUP_TEXT = "mmserve warm-up: the quick brown fox jumps over the lazy dog in London."


def validate_texts(texts: Sequence[str], settings: TextSettings, field: str = "texts") -> list[str]:
    """Enforces the documented limits with messages a person can act on."""
    if not texts:
        raise InvalidInput(f"{field} must contain at least one text")
    if len(texts) > settings.max_items_per_request:
        raise InvalidInput(
            f"too many {field}: {len(texts)} (limit {settings.max_items_per_request} per request)"
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"{field}[{index}] is empty")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"{field}[{index}] has {len(text)} characters (limit {settings.max_text_chars}); split it"
            )
    return list(texts)


class TextService(text_pb2_grpc.TextEncoderServiceServicer):
    service_names = (text_pb2.DESCRIPTOR.services_by_name["TextEncoderService"].full_name,)

    def __init__(self, settings: TextSettings, metrics: ServiceMetrics, embedder, ner) -> None:
        self._settings = settings
        self._metrics = metrics
        self._embedder = embedder
        self._ner = ner
        self._embed_batcher: DynamicBatcher | None = None
        self._ner_batcher: DynamicBatcher | None = None
        self._description: ModelDescription | None = None
        self._ner_description: ModelDescription | None = None

    def add_to_server(self, server: grpc.aio.Server) -> None:
        text_pb2_grpc.add_TextEncoderServiceServicer_to_server(self, server)

    async def start(self) -> None:
        s = self._settings
        description = await asyncio.to_thread(self._embedder.load)
        ner_description = await asyncio.to_thread(self._ner.load)
        self._embed_batcher = DynamicBatcher(
            self._embedder.embed,
            model=description.model_id,
            task="embed",
            metrics=self._metrics,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_size=s.max_queue_size,
            cost=self._embedder.estimated_tokens,
            max_batch_cost=s.max_batch_tokens,
        )
        self._ner_batcher = DynamicBatcher(
            self._ner.extract,
            model=ner_description.model_id,
            task="ner",
            metrics=self._metrics,
            max_batch_size=s.max_batch_size,
            max_wait_ms=s.max_wait_ms,
            max_queue_size=s.max_queue_size,
        )
        self._embed_batcher.start()
        self._ner_batcher.start()
        if s.warmup:
            await self._embed_batcher.submit([WARMUP_TEXT])
            await self._ner_batcher.submit([WARMUP_TEXT])
        # Requests are accepted only from here on: the batchers exist and the model answered.
        self._description, self._ner_description = description, ner_description

    async def stop(self) -> None:
        for batcher in (self._embed_batcher, self._ner_batcher):
            if batcher is not None:
                await batcher.stop()

    def _ready(self) -> ModelDescription:
        if self._description is None:
            raise NotReady("the text model is still loading")
        return self._description

    async def Embed(self, request: text_pb2.EmbedTextRequest, context: grpc.aio.ServicerContext):
        description = self._ready()
        texts = validate_texts(request.texts, self._settings)
        batch = await self._embed_batcher.submit(texts, context.time_remaining())
        return text_pb2.EmbedTextResponse(
            embeddings=to_matrix(batch.vectors),
            token_counts=batch.token_counts.tolist(),
            truncated=batch.truncated.tolist(),
            model_id=description.model_id,
        )

    async def ExtractEntities(
        self, request: text_pb2.ExtractEntitiesRequest, context: grpc.aio.ServicerContext
    ):
        self._ready()
        texts = validate_texts(request.texts, self._settings)
        found = await self._ner_batcher.submit(texts, context.time_remaining())
        return text_pb2.ExtractEntitiesResponse(
            results=[
                text_pb2.EntityList(
                    entities=[
                        text_pb2.Entity(
                            text=e.text,
                            label=e.label,
                            start_char=e.start_char,
                            end_char=e.end_char,
                            score=e.score,
                        )
                        for e in entities
                    ]
                )
                for entities in found
            ],
            model_id=self._ner_description.model_id,
        )

    async def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        d = self._ready()
        return common_pb2.ModelInfo(
            model_id=d.model_id,
            revision=d.revision,
            embedding_dim=d.embedding_dim,
            modality=common_pb2.MODALITY_TEXT,
            device=d.device,
            dtype=d.dtype,
            max_batch_size=self._settings.max_batch_size,
            max_input_tokens=d.max_input_tokens,
        )
