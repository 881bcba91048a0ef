"""How fusion treats its encoders: deadlines, request ids, passed-through codes, cancellation, and
noticing an encoder that changed model, all through real gRPC servers in this process.

The encoders here are small recording servers (no model), so each behaviour can be provoked
exactly; the same paths against the real encoders are in test_fusion_service.py.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from mmserve.v1 import (
    common_pb2,
    fusion_pb2,
    fusion_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from services.common.matrix import from_matrix, to_matrix
from services.common.metrics import ServiceMetrics
from services.common.server import create_server
from services.common.settings import FusionSettings
from services.fusion.clients import EncoderClients
from services.fusion.heads import load_head, save_head
from services.fusion.registry import HeadRegistry
from services.fusion.servicer import FusionService
from services.fusion.similarity import cosine_matrix
from services.fusion.strategies import build_model

TEXT_DIM, IMAGE_DIM = 12, 20
DEFAULT_DEADLINE_S = 7.0


def vectors(items: list, dim: int) -> np.ndarray:
    """Deterministic per-item vectors (what the recording encoders answer)."""
    seeds = [zlib.crc32(item.encode() if isinstance(item, str) else item) for item in items]
    return np.stack([np.random.default_rng(s).standard_normal(dim) for s in seeds]).astype(np.float32)


@dataclass
class Encoder:
    """A recording encoder: answers Embed and GetModelInfo, and can fail, block or change model."""

    modality: str
    info: common_pb2.ModelInfo
    reply_model_id: str | None = None  # what Embed replies claim; defaults to info.model_id
    fail: tuple[grpc.StatusCode, str] | None = None
    block_until: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[dict] = field(default_factory=list)
    cancelled: int = 0

    async def Embed(self, request, context: grpc.aio.ServicerContext):
        items = list(request.texts) if self.modality == "text" else list(request.images)
        self.calls.append(
            {"metadata": dict(context.invocation_metadata()), "remaining_s": context.time_remaining()}
        )
        self.arrived.set()
        if self.block_until is not None:
            try:
                await self.block_until.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.fail is not None:
            await context.abort(*self.fail)
        matrix = to_matrix(vectors(items, self.info.embedding_dim))
        model_id = self.info.model_id if self.reply_model_id is None else self.reply_model_id
        if self.modality == "text":
            return text_pb2.EmbedTextResponse(embeddings=matrix, model_id=model_id)
        return vision_pb2.EmbedImageResponse(embeddings=matrix, model_id=model_id)

    async def GetModelInfo(self, request, context):
        return self.info


class _TextServicer(text_pb2_grpc.TextEncoderServiceServicer):
    def __init__(self, encoder: Encoder) -> None:
        self.Embed, self.GetModelInfo = encoder.Embed, encoder.GetModelInfo


class _VisionServicer(vision_pb2_grpc.VisionEncoderServiceServicer):
    def __init__(self, encoder: Encoder) -> None:
        self.Embed, self.GetModelInfo = encoder.Embed, encoder.GetModelInfo


async def serve_encoder(encoder: Encoder, port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    if encoder.modality == "text":
        text_pb2_grpc.add_TextEncoderServiceServicer_to_server(_TextServicer(encoder), server)
    else:
        vision_pb2_grpc.add_VisionEncoderServiceServicer_to_server(_VisionServicer(encoder), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


def info(model_id: str, dim: int, revision: str = "r1") -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(model_id=model_id, revision=revision, embedding_dim=dim)


def write_head(heads_dir: Path, name: str = "match", strategy: str = "weighted_sum") -> None:
    torch.manual_seed(0)
    save_head(
        heads_dir / name,
        build_model(strategy, TEXT_DIM, IMAGE_DIM, {"fused_dim": 8, "hidden_dim": 8}, num_outputs=2),
        strategy=strategy,
        input_dims={"text": TEXT_DIM, "image": IMAGE_DIM},
        config={"fused_dim": 8, "hidden_dim": 8},
        encoders={
            "text": {"model_id": "text-model", "revision": "r1"},
            "image": {"model_id": "image-model", "revision": "r1"},
        },
        labels=("no", "yes"),
    )


@dataclass
class Setup:
    text: Encoder
    image: Encoder
    servers: dict[str, grpc.aio.Server]
    ports: dict[str, int]
    fusion: fusion_pb2_grpc.FusionServiceStub
    heads_dir: Path


@asynccontextmanager
async def running(tmp_path: Path, text_info=None, image_info=None) -> AsyncIterator[Setup]:
    text = Encoder("text", text_info or info("text-model", TEXT_DIM))
    image = Encoder("image", image_info or info("image-model", IMAGE_DIM))
    (text_server, text_port), (image_server, image_port) = (
        await serve_encoder(text),
        await serve_encoder(image),
    )
    write_head(tmp_path)
    settings = FusionSettings(
        host="127.0.0.1",
        port=0,
        text_address=f"127.0.0.1:{text_port}",
        vision_address=f"127.0.0.1:{image_port}",
        heads_dir=str(tmp_path),
        heads_reload_interval_s=600.0,  # nothing here may rely on the periodic rescan
        default_deadline_s=DEFAULT_DEADLINE_S,
    )
    clients = EncoderClients(settings)
    service = FusionService(
        settings, clients, HeadRegistry(tmp_path, clients.refresh_infos, settings.heads_reload_interval_s)
    )
    fusion = create_server(settings, service, ServiceMetrics())
    await fusion.server.start()
    await service.start()
    servers = {"text": text_server, "image": image_server}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fusion.port}") as channel:
            yield Setup(
                text, image, servers, {"text": text_port, "image": image_port},
                fusion_pb2_grpc.FusionServiceStub(channel), tmp_path,
            )  # fmt: skip
    finally:
        await fusion.server.stop(0)
        await service.stop()
        for server in servers.values():
            await server.stop(0)


ROWS = [("a red circle", b"image-0"), ("a blue square", b"image-1")]


def predict_request(text: bool = True, image: bool = True, head: str = "match") -> fusion_pb2.PredictRequest:
    return fusion_pb2.PredictRequest(
        inputs=[
            fusion_pb2.MultimodalInput(text=t if text else None, image=i if image else None) for t, i in ROWS
        ],
        head=head,
    )


async def test_predict_equals_the_head_on_the_encoders_vectors(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        reply = await s.fusion.Predict(predict_request(), timeout=5)
    head = load_head(tmp_path / "match")
    expected = head.predict_proba(
        vectors([t for t, _ in ROWS], TEXT_DIM), vectors([i for _, i in ROWS], IMAGE_DIM)
    )
    np.testing.assert_allclose([[x.score for x in p.scores] for p in reply.predictions], expected, atol=1e-6)


async def test_the_callers_deadline_and_request_id_reach_both_encoders(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        await s.fusion.Predict(predict_request(), timeout=3.0, metadata=(("x-request-id", "rid-7f3a"),))
        await s.fusion.Predict(predict_request())  # no deadline: the configured default applies
    for encoder in (s.text, s.image):
        with_deadline, without = encoder.calls
        assert with_deadline["metadata"]["x-request-id"] == "rid-7f3a"
        # gRPC rounds a timeout up when it encodes it on the wire, hence the small slack.
        assert 2.0 < with_deadline["remaining_s"] <= 3.05
        assert DEFAULT_DEADLINE_S - 1.0 < without["remaining_s"] <= DEFAULT_DEADLINE_S + 0.05
        assert without["metadata"]["x-request-id"], "fusion makes an id when the caller sent none"
    assert s.text.calls[1]["metadata"]["x-request-id"] == s.image.calls[1]["metadata"]["x-request-id"]


async def test_a_downstream_code_passes_through_and_cancels_the_other_call(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.text.block_until = asyncio.Event()  # never set: the text call only ends by cancellation
        s.image.fail = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (1024 items)")
        s.image.block_until = s.text.arrived  # fail only once the text call is in flight
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.fusion.Predict(predict_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "vision encoder: queue full (1024 items)"
        for _ in range(100):
            if s.text.cancelled:
                break
            await asyncio.sleep(0.02)
        assert s.text.cancelled == 1, "the text call is cancelled, not left running"


async def test_text_only_requests_never_call_the_vision_encoder(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        s.image.fail = (grpc.StatusCode.UNAVAILABLE, "down")
        reply = await s.fusion.Predict(predict_request(image=False), timeout=5)
        assert len(reply.predictions) == len(ROWS) and s.image.calls == []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.fusion.Predict(predict_request(text=False), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_encoder_that_changed_model_is_refused_before_the_head_runs(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        await s.fusion.Predict(predict_request(), timeout=5)
        # Another model behind the same connection (a replica of a rolling update).
        s.image.info = info("vit-base", IMAGE_DIM)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.fusion.Predict(predict_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "trained on image encoder image-model@r1 (dim 20) but vit-base@r1" in caught.value.details()
        assert (await s.fusion.Predict(predict_request(image=False), timeout=5)).predictions

        # Replies and model info disagree: fusion can't tell which model it got, so it refuses.
        s.image.info, s.image.reply_model_id = info("image-model", IMAGE_DIM), "resnet-50"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.fusion.Predict(predict_request(), timeout=5)
        assert (
            caught.value.code() == grpc.StatusCode.UNAVAILABLE and "changing models" in caught.value.details()
        )


async def test_model_info_is_read_again_after_the_encoder_reconnects(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        await s.fusion.Predict(predict_request(), timeout=5)
        # Same model id and dim, other weights: only a fresh GetModelInfo can tell.
        await s.servers["image"].stop(0)
        s.image.info = info("image-model", IMAGE_DIM, revision="r2")
        s.servers["image"], _ = await serve_encoder(s.image, port=s.ports["image"])
        refused = None
        for _ in range(50):  # the channel reconnects within its 1 s backoff
            try:
                await s.fusion.Predict(predict_request(), timeout=5)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    refused = error
                    break
            await asyncio.sleep(0.1)
        assert refused is not None and "image-model@r2" in refused.details()


async def test_native_similarity_is_refused_before_any_forward_pass(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        request = fusion_pb2.SimilarityRequest(
            texts=["a cat"], images=[b"image-0"], candidate_labels=["cat", "dog"]
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.fusion.Similarity(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "do not share an embedding space" in caught.value.details()
        assert s.text.calls == [] and s.image.calls == []


async def test_native_similarity_of_two_towers_of_one_checkpoint(tmp_path: Path) -> None:
    clip = info("/models/clip", 16, revision="sha256:0123456789ab")
    async with running(tmp_path, text_info=clip, image_info=clip) as s:
        texts, images = ["a cat", "a dog"], [b"image-0", b"image-1", b"image-2"]
        request = fusion_pb2.SimilarityRequest(texts=texts, images=images, candidate_labels=["cat", "dog"])
        reply = await s.fusion.Similarity(request, timeout=5)
    assert reply.space == "native"
    np.testing.assert_allclose(
        from_matrix(reply.scores), cosine_matrix(vectors(texts, 16), vectors(images, 16)), atol=1e-6
    )
    prompts = vectors(["a photo of a cat.", "a photo of a dog."], 16)
    best = cosine_matrix(vectors(images, 16), prompts).argmax(axis=1)
    assert [r.labels[0].label for r in reply.zero_shot] == [["cat", "dog"][i] for i in best]
