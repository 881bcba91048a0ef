"""Async clients of the text and vision encoders, as the fusion service calls them.

Every call carries a deadline (the caller's remaining time, or the configured default) and the
request id; a downstream failure is raised as ``UpstreamError`` with the downstream status code,
so the caller sees UNAVAILABLE, INVALID_ARGUMENT, ... exactly as the encoder reported it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from mmserve.v1 import common_pb2, text_pb2, text_pb2_grpc, vision_pb2, vision_pb2_grpc
from services.common.channels import ChannelSecurity, create_aio_channel
from services.common.errors import UpstreamError
from services.common.logs import REQUEST_ID_HEADER, request_id_var
from services.common.matrix import from_matrix
from services.common.settings import FusionSettings

_LOGGER = logging.getLogger(__name__)
MODEL_INFO_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class EncoderInfo:
    """What fusion knows of a serving encoder (the fields heads are checked against)."""

    model_id: str
    revision: str
    embedding_dim: int

    @classmethod
    def from_proto(cls, info: common_pb2.ModelInfo) -> EncoderInfo:
        return cls(info.model_id, info.revision, info.embedding_dim)


def _metadata() -> tuple[tuple[str, str], ...]:
    request_id = request_id_var.get()
    return ((REQUEST_ID_HEADER, request_id),) if request_id else ()


def _upstream(service: str, error: grpc.aio.AioRpcError) -> UpstreamError:
    return UpstreamError(error.code(), f"{service} encoder: {error.details() or error.code().name}")


class EncoderClients:
    """Channels and stubs for both encoders; ``dns:///`` targets spread calls over replicas."""

    def __init__(self, settings: FusionSettings) -> None:
        security = ChannelSecurity(settings.tls_ca_file, settings.tls_client_cert_file, settings.tls_client_key_file)
        self._text_channel = create_aio_channel(settings.text_address, security)
        self._vision_channel = create_aio_channel(settings.vision_address, security)
        self._text = text_pb2_grpc.TextEncoderServiceStub(self._text_channel)
        self._vision = vision_pb2_grpc.VisionEncoderServiceStub(self._vision_channel)
        self._default_deadline_s = settings.default_deadline_s

    def timeout(self, remaining_s: float | None) -> float:
        return remaining_s if remaining_s is not None else self._default_deadline_s

    async def embed_texts(self, texts: Sequence[str], remaining_s: float | None) -> np.ndarray:
        try:
            reply = await self._text.Embed(
                text_pb2.EmbedTextRequest(texts=texts), timeout=self.timeout(remaining_s), metadata=_metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise _upstream("text", error) from None
        return from_matrix(reply.embeddings)

    async def embed_images(self, images: Sequence[bytes], remaining_s: float | None) -> np.ndarray:
        try:
            reply = await self._vision.Embed(
                vision_pb2.EmbedImageRequest(images=images), timeout=self.timeout(remaining_s), metadata=_metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise _upstream("vision", error) from None
        return from_matrix(reply.embeddings)

    async def model_infos(self) -> dict[str, EncoderInfo | None]:
        """Both encoders' model info; None for one that does not answer now."""
        request = common_pb2.GetModelInfoRequest()
        replies = await asyncio.gather(
            self._text.GetModelInfo(request, timeout=MODEL_INFO_TIMEOUT_S),
            self._vision.GetModelInfo(request, timeout=MODEL_INFO_TIMEOUT_S),
            return_exceptions=True,
        )
        infos: dict[str, EncoderInfo | None] = {}
        for modality, reply in zip(("text", "image"), replies, strict=True):
            infos[modality] = None if isinstance(reply, BaseException) else EncoderInfo.from_proto(reply)
        return infos

    async def close(self) -> None:
        await self._text_channel.close()
        await self._vision_channel.close()
