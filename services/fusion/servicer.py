"""FusionService over gRPC: calls the encoders in parallel and runs the trained heads.

Only the modalities a request carries (and its head reads) are sent downstream, so text-only
requests keep working while the vision encoder is down. Head math runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from mmserve.v1 import common_pb2, fusion_pb2, fusion_pb2_grpc
from services.common.errors import FailedPrecondition, InvalidInput
from services.common.matrix import to_matrix
from services.common.settings import FusionSettings
from services.fusion.clients import EncoderClients
from services.fusion.heads import Head
from services.fusion.registry import HeadRegistry
from services.fusion.similarity import cosine_matrix, native_space_reason, zero_shot

ZERO_SHOT_PROMPT = "a photo of a {}."


class FusionService(fusion_pb2_grpc.FusionServiceServicer):
    service_names = (fusion_pb2.DESCRIPTOR.services_by_name["FusionService"].full_name,)

    def __init__(self, settings: FusionSettings, clients: EncoderClients, registry: HeadRegistry) -> None:
        self._settings = settings
        self._clients = clients
        self._registry = registry
        self._head_pool = ThreadPoolExecutor(1, thread_name_prefix="fusion-heads")

    def add_to_server(self, server: grpc.aio.Server) -> None:
        fusion_pb2_grpc.add_FusionServiceServicer_to_server(self, server)

    async def start(self) -> None:
        await self._registry.start()

    async def stop(self) -> None:
        await self._registry.stop()
        await self._clients.close()
        self._head_pool.shutdown(wait=True)

    def _check_inputs(self, inputs: Sequence[fusion_pb2.MultimodalInput]) -> None:
        if not inputs:
            raise InvalidInput("inputs must contain at least one item")
        if len(inputs) > self._settings.max_items_per_request:
            raise InvalidInput(f"too many inputs: {len(inputs)} (limit {self._settings.max_items_per_request})")
        for index, item in enumerate(inputs):
            has_text = item.HasField("text") and item.text.strip() != ""
            if not has_text and not item.HasField("image"):
                raise InvalidInput(f"inputs[{index}] needs a text, an image or both")

    async def _encode(self, inputs: Sequence[fusion_pb2.MultimodalInput], head: Head, context) -> dict:
        """Embeds the modalities the head reads, in parallel; rows without one are masked out."""
        n = len(inputs)
        remaining = context.time_remaining()
        wanted = set(head.manifest.modalities)
        text_rows = [i for i, x in enumerate(inputs) if "text" in wanted and x.HasField("text") and x.text.strip()]
        image_rows = [i for i, x in enumerate(inputs) if "image" in wanted and x.HasField("image")]
        if not text_rows and not image_rows:
            raise InvalidInput(f"head {head.name!r} reads {', '.join(sorted(wanted))}; the inputs carry none of it")
        calls = {}
        if text_rows:
            calls["text"] = self._clients.embed_texts([inputs[i].text for i in text_rows], remaining)
        if image_rows:
            calls["image"] = self._clients.embed_images([inputs[i].image for i in image_rows], remaining)
        results = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
        arrays: dict = {"text": None, "image": None, "text_mask": None, "image_mask": None}
        for modality, rows in (("text", text_rows), ("image", image_rows)):
            if modality in results:
                full = np.zeros((n, results[modality].shape[1]), dtype=np.float32)
                full[rows] = results[modality]
                mask = np.zeros(n, dtype=bool)
                mask[rows] = True
                arrays[modality], arrays[f"{modality}_mask"] = full, mask
        return arrays

    async def _run_head(self, fn, **arrays) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._head_pool, lambda: fn(**arrays))

    async def Embed(self, request: fusion_pb2.FusionEmbedRequest, context: grpc.aio.ServicerContext):
        head = self._registry.get(request.head)
        self._check_inputs(request.inputs)
        arrays = await self._encode(request.inputs, head, context)
        fused = await self._run_head(head.embed, **arrays)
        return fusion_pb2.FusionEmbedResponse(embeddings=to_matrix(fused), head=head.name)

    async def Predict(self, request: fusion_pb2.PredictRequest, context: grpc.aio.ServicerContext):
        head = self._registry.get(request.head)
        if head.manifest.task != "classification":
            raise FailedPrecondition(f"head {head.name!r} is an {head.manifest.task} head; Predict needs a classifier")
        self._check_inputs(request.inputs)
        arrays = await self._encode(request.inputs, head, context)
        probabilities = await self._run_head(head.predict_proba, **arrays)
        labels = head.labels
        predictions = []
        for row in probabilities:
            best = int(np.argmax(row))
            predictions.append(
                fusion_pb2.Prediction(
                    label=labels[best],
                    score=float(row[best]),
                    scores=[common_pb2.LabelScore(label=label, score=float(p)) for label, p in zip(labels, row, strict=True)],
                )
            )
        return fusion_pb2.PredictResponse(predictions=predictions, head=head.name)

    async def Similarity(self, request: fusion_pb2.SimilarityRequest, context: grpc.aio.ServicerContext):
        s = self._settings
        texts, images, labels = list(request.texts), list(request.images), list(request.candidate_labels)
        if not images:
            raise InvalidInput("similarity needs at least one image")
        if not texts and not labels:
            raise InvalidInput("similarity needs texts or candidate_labels to compare the images with")
        if len(texts) + len(images) > s.max_items_per_request:
            raise InvalidInput(f"too many items: {len(texts) + len(images)} (limit {s.max_items_per_request})")
        if len(labels) > s.max_candidate_labels:
            raise InvalidInput(f"too many candidate_labels: {len(labels)} (limit {s.max_candidate_labels})")
        for field, values in (("texts", texts), ("candidate_labels", labels)):
            for index, value in enumerate(values):
                if not value.strip():
                    raise InvalidInput(f"{field}[{index}] is empty")

        head = self._registry.get(request.head) if request.head else None
        if head is not None and head.manifest.task != "alignment":
            raise FailedPrecondition(f"head {head.name!r} is a {head.manifest.task} head; Similarity needs an alignment head")
        if head is None:
            reason = native_space_reason(self._registry.encoder_infos)
            if reason:
                raise FailedPrecondition(reason)

        remaining = context.time_remaining()
        prompts = [ZERO_SHOT_PROMPT.format(label) for label in labels]
        all_texts = texts + prompts
        text_vectors, image_vectors = await asyncio.gather(
            self._clients.embed_texts(all_texts, remaining),
            self._clients.embed_images(images, remaining),
        )
        if head is not None:
            text_vectors = await self._run_head(head.project_text, text=text_vectors)
            image_vectors = await self._run_head(head.project_image, image=image_vectors)
            logit_scale = head.logit_scale
        else:
            logit_scale = 100.0  # CLIP's trained temperature (exp(4.6052)), clamped there in training
        scores = cosine_matrix(text_vectors[: len(texts)], image_vectors)
        results = []
        if labels:
            for ranked in zero_shot(text_vectors[len(texts) :], image_vectors, labels, logit_scale):
                results.append(
                    fusion_pb2.ZeroShotResult(labels=[common_pb2.LabelScore(label=name, score=p) for name, p in ranked])
                )
        return fusion_pb2.SimilarityResponse(
            scores=to_matrix(scores), zero_shot=results, space=head.name if head is not None else "native"
        )

    async def ListHeads(self, request: fusion_pb2.ListHeadsRequest, context: grpc.aio.ServicerContext):
        heads = []
        for head in self._registry.served():
            m = head.manifest
            heads.append(
                fusion_pb2.HeadInfo(
                    name=m.name,
                    task=m.task,
                    strategy=m.strategy,
                    labels=list(m.labels),
                    text_model_id=m.encoders["text"].model_id if "text" in m.encoders else "",
                    vision_model_id=m.encoders["image"].model_id if "image" in m.encoders else "",
                    embedding_dim=m.fused_dim,
                    metrics_json=json.dumps(dict(m.metrics), default=str),
                )
            )
        return fusion_pb2.ListHeadsResponse(heads=heads)
