"""TextEncoderService over gRPC: validates requests, batches them, packs the results.

Converts protos to plain Python values and back; never touches torch (the backends do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from mmserve.v1 import common_pb2, text_pb2, text_pb2_grpc
from services.common.backend import ModelBackend, ModelDescription
from services.common.encoder_service import EncoderService, check_item_count, label_scores, resolve_top_k
from services.common.errors import FailedPrecondition, InvalidInput
from services.common.matrix import to_matrix
from services.common.metrics import ServiceMetrics
from services.common.settings import TextSettings

WARMUP_TEXT = "mmserve warm-up: the quick brown fox jumps over the lazy dog in London."


def validate_texts(texts: Sequence[str], settings: TextSettings, field: str = "texts") -> list[str]:
    """Enforces the documented limits with messages a person can act on."""
    texts = check_item_count(texts, settings.max_items_per_request, field, "text")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"{field}[{index}] is empty")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"{field}[{index}] has {len(text)} characters (limit {settings.max_text_chars}); split it"
            )
    return texts


def check_request_chars(texts: Sequence[str], limit: int) -> None:
    """Tasks that read every character (NER) get a per-request budget, so one request cannot hold
    the worker for long while requests queued behind it miss their deadlines."""
    total = sum(map(len, texts))
    if total > limit:
        raise InvalidInput(
            f"the texts have {total} characters in all (limit {limit} per request for this task); "
            "send fewer or shorter texts per request"
        )


class TextService(EncoderService, text_pb2_grpc.TextEncoderServiceServicer):
    """Tasks: ``embed`` (the main model), ``ner`` and, when a classifier is configured, ``classify``."""

    modality = common_pb2.MODALITY_TEXT
    name = "text"
    service_names = (text_pb2.DESCRIPTOR.services_by_name["TextEncoderService"].full_name,)

    def __init__(
        self,
        settings: TextSettings,
        metrics: ServiceMetrics,
        embedder: ModelBackend,
        ner: ModelBackend,
        classifier: ModelBackend | None = None,
    ) -> None:
        backends = {"embed": embedder, "ner": ner}
        if classifier is not None:
            backends["classify"] = classifier
        super().__init__(settings, metrics, backends, settings.max_batch_tokens)
        self._text_settings = settings

    def add_to_server(self, server: grpc.aio.Server) -> None:
        text_pb2_grpc.add_TextEncoderServiceServicer_to_server(self, server)

    async def warm_up(self, descriptions: Mapping[str, ModelDescription]) -> None:
        for task in descriptions:
            await self.run(task, [(WARMUP_TEXT, 1) if task == "classify" else WARMUP_TEXT])

    async def Embed(self, request: text_pb2.EmbedTextRequest, context: grpc.aio.ServicerContext):
        description = self.description()
        texts = validate_texts(request.texts, self._text_settings)
        batch = await self.run("embed", texts, context.time_remaining())
        return text_pb2.EmbedTextResponse(
            embeddings=to_matrix(batch.vectors),
            token_counts=batch.token_counts.tolist(),
            truncated=batch.truncated.tolist(),
            model_id=description.model_id,
        )

    async def ExtractEntities(
        self, request: text_pb2.ExtractEntitiesRequest, context: grpc.aio.ServicerContext
    ):
        description = self.description("ner")
        texts = validate_texts(request.texts, self._text_settings)
        check_request_chars(texts, self._text_settings.max_request_chars_ner)
        found = await self.run("ner", texts, context.time_remaining())
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
            model_id=description.model_id,
        )

    async def ClassifyText(self, request: text_pb2.ClassifyTextRequest, context: grpc.aio.ServicerContext):
        self.description()  # NotReady while loading
        if "classify" not in self._backends:
            raise FailedPrecondition(
                "no text classifier is served; start the text service with MMSERVE_TEXT_CLASSIFIER_MODEL"
            )
        description = self.description("classify")
        top_k = resolve_top_k(request.top_k, self._text_settings.top_k, len(description.labels))
        texts = validate_texts(request.texts, self._text_settings)
        check_request_chars(texts, self._text_settings.max_request_chars_ner)
        ranked = await self.run("classify", [(text, top_k) for text in texts], context.time_remaining())
        return text_pb2.ClassifyTextResponse(
            results=[text_pb2.TextClassification(labels=label_scores(labels)) for labels in ranked],
            model_id=description.model_id,
        )
