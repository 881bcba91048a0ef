"""FusionService over gRPC: calls the encoders in parallel and runs the trained heads.

Only the modalities a request carries (and its head reads) are sent downstream, so text-only
requests keep working while the vision encoder is down; when one encoder call fails, the others
are cancelled and the failure's status code reaches the caller unchanged. Tabular features need
no encoder: they are checked against the head's feature schema (every name, no other, finite
numbers; INVALID_ARGUMENT naming the feature otherwise) and standardised by the head. Before a head runs,
the models that produced the embeddings are checked against the head's manifest. Head math on
more than a few rows runs on a worker thread, off the event loop.

Predict refuses inputs lacking a modality the head reads when the head's missing-modality
policy is ``refuse`` (INVALID_ARGUMENT naming the input and the modality, before any encoder
is called), and every prediction lists the modalities it rests on.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import numpy as np

from mmserve.v1 import common_pb2, fusion_pb2, fusion_pb2_grpc
from services.common.errors import FailedPrecondition, InvalidInput, NotReady
from services.common.matrix import to_matrix
from services.common.settings import AudioSettings, FusionSettings, TextSettings, VisionSettings
from services.fusion.clients import Embeddings, EncoderClients
from services.fusion.heads import Head
from services.fusion.inference_protocol import SERVICE_NAME as INFERENCE_PROTOCOL
from services.fusion.inference_protocol import InferenceProtocolService
from services.fusion.modalities import FEATURES, encoded, joined
from services.fusion.modalities import NAMES as MODALITY_NAMES
from services.fusion.outputs import CLASSIFICATION, Outputs
from services.fusion.registry import HeadRegistry
from services.fusion.similarity import NATIVE_LOGIT_SCALE, cosine_matrix, native_space_reason, zero_shot

# CLIP's zero-shot prompt: labels alone embed worse than a caption-like sentence.
ZERO_SHOT_PROMPT = "a photo of a {}."

# Items per call to each encoder: its own default per-request limit (ModelInfo does not carry it);
# a request's items of one modality (Similarity's texts plus its label prompts too) go out in
# calls of at most this many, concurrently.
ITEMS_PER_CALL = {
    "text": TextSettings.max_items_per_request,
    "image": VisionSettings.max_items_per_request,
    "audio": AudioSettings.max_items_per_request,
}

# A head on a few rows takes 0.2-0.4 ms on one CPU core, about what the hop to a worker thread
# costs, so it runs on the event loop; larger batches (up to ~1 ms at 64 rows) go to the thread.
INLINE_HEAD_MAX_ROWS = 8

T = TypeVar("T")


async def gather_or_fail_fast(calls: Mapping[str, Awaitable[T]]) -> dict[str, T]:
    """Awaits the calls concurrently; the first failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = {key: group.create_task(call) for key, call in calls.items()}
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return {key: task.result() for key, task in tasks.items()}


async def embed_in_chunks(
    embed: Callable[[Sequence[str], float], Awaitable[Embeddings]],
    items: Sequence[str],
    chunk_size: int,
    deadline: float,
) -> Embeddings:
    """``embed`` over more items than one call may carry: calls of ``chunk_size`` items sent at
    once, their vectors concatenated in order. All must come from one model (NotReady if a
    rolling update answered some calls with another)."""
    if len(items) <= chunk_size:
        return await embed(items, deadline)
    starts = range(0, len(items), chunk_size)
    parts = await gather_or_fail_fast(
        {start: embed(items[start : start + chunk_size], deadline) for start in starts}
    )
    infos = {part.info for part in parts.values()}
    if len(infos) > 1:
        raise NotReady(
            "the encoder answered parts of the request with different models (it is changing models); retry"
        )
    return Embeddings(np.concatenate([parts[start].vectors for start in starts]), infos.pop())


def _has(item: fusion_pb2.MultimodalInput, modality: str) -> bool:
    """Whether the input carries the modality (its field, named as the modality, is set; blank text is none)."""
    if modality == "text":
        return item.HasField("text") and item.text.strip() != ""
    return item.HasField(modality)


def _presence(inputs: Sequence[fusion_pb2.MultimodalInput]) -> dict[str, list[bool]]:
    return {m: [_has(item, m) for item in inputs] for m in MODALITY_NAMES}


_MODALITY_ENUM = {m: common_pb2.Modality.Value(f"MODALITY_{m.upper()}") for m in MODALITY_NAMES}


def _class_prediction(labels, row: np.ndarray) -> fusion_pb2.ClassPrediction:
    best = int(np.argmax(row))
    return fusion_pb2.ClassPrediction(
        label=labels[best],
        score=float(row[best]),
        scores=[common_pb2.LabelScore(label=lb, score=float(p)) for lb, p in zip(labels, row, strict=True)],
    )


def _predictions(head: Head, outputs: Outputs, used: list[tuple[str, ...]]) -> list[fusion_pb2.Prediction]:
    """One Prediction per row: the classification fields, values and tasks as the head's task has them."""
    predictions = []
    for index, modalities in enumerate(used):
        prediction = fusion_pb2.Prediction(modalities=[_MODALITY_ENUM[m] for m in modalities])
        for spec in head.outputs:
            if spec.kind != CLASSIFICATION:
                prediction.values[spec.name] = float(outputs.values[spec.name][index])
                continue
            answer = _class_prediction(spec.labels, outputs.probabilities[spec.name][index])
            if head.task == CLASSIFICATION:
                prediction.label, prediction.score = answer.label, answer.score
                prediction.scores.extend(answer.scores)
            else:
                prediction.tasks[spec.name].CopyFrom(answer)
        if outputs.attention is not None:
            prediction.attention.update(
                zip(head.attention_keys, map(float, outputs.attention[index]), strict=True)
            )
        predictions.append(prediction)
    return predictions


class FusionService(fusion_pb2_grpc.FusionServiceServicer):
    service_names = (fusion_pb2.DESCRIPTOR.services_by_name["FusionService"].full_name, INFERENCE_PROTOCOL)

    def __init__(self, settings: FusionSettings, clients: EncoderClients, registry: HeadRegistry) -> None:
        self._settings = settings
        self._clients = clients
        self._registry = registry
        # One worker: heads are small, and only batches above INLINE_HEAD_MAX_ROWS come here.
        self._head_pool = ThreadPoolExecutor(1, thread_name_prefix="fusion-heads")
        # The Open Inference Protocol (KServe/Triton clients), answered through this servicer.
        self._inference_protocol = InferenceProtocolService(self, clients)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        fusion_pb2_grpc.add_FusionServiceServicer_to_server(self, server)
        self._inference_protocol.add_to_server(server)

    async def start(self) -> None:
        """Scans the heads once (encoders may still be down; they are not needed to serve)."""
        self._clients.start()
        await self._registry.start()

    async def stop(self) -> None:
        await self._registry.stop()
        await self._clients.close()
        self._head_pool.shutdown(wait=True)

    async def _run_head(self, fn: Callable[..., np.ndarray], rows: int, **arrays) -> np.ndarray:
        if rows <= INLINE_HEAD_MAX_ROWS:
            return fn(**arrays)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._head_pool, lambda: fn(**arrays))

    def _check_inputs(self, inputs: Sequence[fusion_pb2.MultimodalInput]) -> dict[str, list[bool]]:
        """The inputs' presence per modality; refuses empty requests and inputs carrying nothing."""
        if not inputs:
            raise InvalidInput("inputs must contain at least one item")
        limit = self._settings.max_items_per_request
        if len(inputs) > limit:
            raise InvalidInput(f"too many inputs: {len(inputs)} (limit {limit})")
        present = _presence(inputs)
        for index in range(len(inputs)):
            if not any(present[m][index] for m in MODALITY_NAMES):
                raise InvalidInput(f"inputs[{index}] needs a text, an image, audio or features (any of them)")
        return present

    async def _encode(
        self,
        inputs: Sequence[fusion_pb2.MultimodalInput],
        head: Head,
        present: dict[str, list[bool]],
        context,
    ) -> dict:
        """Embeds the modalities the head reads, in parallel, and reads its features; rows without
        one are masked out. Returns Head keyword arguments (``inputs``, ``masks``)."""
        reads = head.manifest.modalities
        rows = {m: [i for i, has in enumerate(present[m]) if has] for m in reads}
        if not any(rows.values()):
            raise InvalidInput(f"head {head.name!r} reads {joined(reads)}; no input carries any of them")
        deadline = self._clients.deadline(context.time_remaining())
        calls = {}
        for modality in encoded(reads):
            if rows[modality]:
                items = [getattr(inputs[i], modality) for i in rows[modality]]
                embed = functools.partial(self._clients.embed, modality)
                calls[modality] = embed_in_chunks(embed, items, ITEMS_PER_CALL[modality], deadline)
        results: dict[str, Embeddings] = await gather_or_fail_fast(calls) if calls else {}
        self._registry.check(head, {modality: result.info for modality, result in results.items()})

        n = len(inputs)
        vectors = {modality: result.vectors for modality, result in results.items()}
        if FEATURES in reads and rows[FEATURES]:
            schema = head.manifest.features
            vectors[FEATURES] = np.stack(
                [schema.vector(inputs[i].features.values, f"inputs[{i}].features") for i in rows[FEATURES]]
            )
        arrays, masks = {}, {}
        for modality, block in vectors.items():
            full = np.zeros((n, block.shape[1]), dtype=block.dtype)
            full[rows[modality]] = block
            mask = np.zeros(n, dtype=bool)
            mask[rows[modality]] = True
            arrays[modality], masks[modality] = full, mask
        return {"inputs": arrays, "masks": masks}

    async def Embed(self, request: fusion_pb2.FusionEmbedRequest, context: grpc.aio.ServicerContext):
        head = self._registry.get(request.head)
        present = self._check_inputs(request.inputs)
        arrays = await self._encode(request.inputs, head, present, context)
        fused = await self._run_head(head.embed, len(request.inputs), **arrays)
        return fusion_pb2.FusionEmbedResponse(embeddings=to_matrix(fused), head=head.name)

    async def Predict(self, request: fusion_pb2.PredictRequest, context: grpc.aio.ServicerContext):
        head = self._registry.get(request.head)
        if head.manifest.task == "alignment":
            raise FailedPrecondition(
                f"head {head.name!r} is an alignment head; Predict needs a classification, regression "
                "or multi-task head"
            )
        present = self._check_inputs(request.inputs)
        head.check_modalities(present)  # before spending any encoder call
        if request.explain and not head.can_explain:
            raise InvalidInput(
                f"head {head.name!r} ({head.manifest.strategy}) has no attention weights; "
                "explain needs an attention head"
            )
        arrays = await self._encode(request.inputs, head, present, context)
        outputs = await self._run_head(head.predict, len(request.inputs), **arrays, explain=request.explain)
        predictions = _predictions(head, outputs, head.modalities_used(present))
        return fusion_pb2.PredictResponse(predictions=predictions, head=head.name)

    def _check_similarity(self, texts: list[str], images: list[bytes], labels: list[str]) -> None:
        s = self._settings
        if not images:
            raise InvalidInput("similarity needs at least one image")
        if not texts and not labels:
            raise InvalidInput("similarity needs texts or candidate_labels to compare the images with")
        if len(texts) + len(images) > s.max_items_per_request:
            raise InvalidInput(
                f"too many items: {len(texts)} texts + {len(images)} images (limit {s.max_items_per_request})"
            )
        if len(labels) > s.max_candidate_labels:
            raise InvalidInput(f"too many candidate_labels: {len(labels)} (limit {s.max_candidate_labels})")
        if len(set(labels)) != len(labels):
            raise InvalidInput("candidate_labels must be unique")
        for field, values in (("texts", texts), ("candidate_labels", labels)):
            for index, value in enumerate(values):
                if not value.strip():
                    raise InvalidInput(f"{field}[{index}] is empty")

    async def Similarity(self, request: fusion_pb2.SimilarityRequest, context: grpc.aio.ServicerContext):
        texts, images, labels = list(request.texts), list(request.images), list(request.candidate_labels)
        self._check_similarity(texts, images, labels)
        head = self._registry.get(request.head) if request.head else None
        if head is not None and head.manifest.task != "alignment":
            raise FailedPrecondition(
                f"head {head.name!r} is a {head.manifest.task} head; Similarity needs an alignment head"
            )

        deadline = self._clients.deadline(context.time_remaining())
        if head is None:
            # Refuse before spending two forward passes: read the models if not known since the last connect.
            infos = await gather_or_fail_fast(
                {
                    "text": self._clients.text.current_info(deadline),
                    "image": self._clients.image.current_info(deadline),
                }
            )
            if reason := native_space_reason(infos["text"], infos["image"]):
                raise FailedPrecondition(reason)

        prompts = [ZERO_SHOT_PROMPT.format(label) for label in labels]
        results = await gather_or_fail_fast(
            {
                "text": embed_in_chunks(
                    self._clients.embed_texts, texts + prompts, ITEMS_PER_CALL["text"], deadline
                ),
                "image": self._clients.embed_images(images, deadline),
            }
        )
        text_vectors, image_vectors = results["text"].vectors, results["image"].vectors
        if head is None:
            # The models may have changed between the check and the calls; the replies' models decide.
            if reason := native_space_reason(results["text"].info, results["image"].info):
                raise FailedPrecondition(reason)
            logit_scale = NATIVE_LOGIT_SCALE
        else:
            self._registry.check(head, {"text": results["text"].info, "image": results["image"].info})
            text_vectors = await self._run_head(head.project_text, len(text_vectors), text=text_vectors)
            image_vectors = await self._run_head(head.project_image, len(image_vectors), image=image_vectors)
            logit_scale = head.logit_scale

        scores = cosine_matrix(text_vectors[: len(texts)], image_vectors)
        zero_shot_results = [
            fusion_pb2.ZeroShotResult(
                labels=[common_pb2.LabelScore(label=name, score=p) for name, p in ranked]
            )
            for ranked in (
                zero_shot(text_vectors[len(texts) :], image_vectors, labels, logit_scale) if labels else []
            )
        ]
        return fusion_pb2.SimilarityResponse(
            scores=to_matrix(scores),
            zero_shot=zero_shot_results,
            space=head.name if head is not None else "native",
        )

    async def ListHeads(self, request: fusion_pb2.ListHeadsRequest, context: grpc.aio.ServicerContext):
        return fusion_pb2.ListHeadsResponse(heads=[_head_info(head) for head in self._registry.served()])


def _head_info(head: Head) -> fusion_pb2.HeadInfo:
    m = head.manifest
    return fusion_pb2.HeadInfo(
        name=m.name,
        task=m.task,
        strategy=m.strategy,
        labels=list(m.labels),
        text_model_id=_model_id(m, "text"),
        vision_model_id=_model_id(m, "image"),
        audio_model_id=_model_id(m, "audio"),
        feature_names=list(m.features.names) if m.features is not None else [],
        embedding_dim=m.fused_dim,
        metrics_json=json.dumps(dict(m.metrics), default=str),
        format_version=m.format_version,
        missing_modality_policy=m.missing_modality_policy,
        fusion_weights=dict(m.fusion_weights),
        outputs=[fusion_pb2.HeadOutput(name=o.name, kind=o.kind, labels=list(o.labels)) for o in m.outputs],
        modalities=[_MODALITY_ENUM[modality] for modality in m.modalities],
    )


def _model_id(manifest, modality: str) -> str:
    """The encoder a head's manifest records for a modality ("" for none)."""
    ref = manifest.encoders.get(modality)
    return ref.model_id if ref is not None else ""
