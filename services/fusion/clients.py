"""Async clients of the encoders (text, vision, audio), as the fusion service calls them.

Every call carries a deadline (the caller's remaining time, or the configured default) and the
request id; a downstream failure is raised as ``UpstreamError`` with the downstream status code,
so the caller sees UNAVAILABLE, INVALID_ARGUMENT, ... exactly as the encoder reported it.

Each client knows which model its encoder serves (``ModelInfo``): read lazily on first use,
forgotten whenever the channel loses its connection (an encoder may come back with another
model), re-read on every heads scan, and compared with each Embed reply's model id and
dimension, so embeddings are always attributed to the model that really produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from mmserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    common_pb2,
    text_pb2,
    text_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from services.common.backend import EncoderInfo
from services.common.channels import ROTATION_GRACE_S, ChannelSecurity, create_aio_channel
from services.common.errors import NotReady, UpstreamError
from services.common.logs import REQUEST_ID_HEADER, request_id_var
from services.common.matrix import from_matrix
from services.common.settings import FusionSettings

_LOGGER = logging.getLogger(__name__)

# Model info is tiny and answered without touching the model; a slow answer means a sick encoder.
MODEL_INFO_TIMEOUT_S = 2.0
# Timeout for a call whose deadline has already passed: gRPC then fails it with DEADLINE_EXCEEDED.
_EXPIRED_S = 0.001


@dataclass(frozen=True)
class Embeddings:
    """Vectors from one encoder call and the model that produced them."""

    vectors: np.ndarray  # [n, info.embedding_dim] float32
    info: EncoderInfo


def _metadata() -> tuple[tuple[str, str], ...]:
    request_id = request_id_var.get()
    return ((REQUEST_ID_HEADER, request_id),) if request_id else ()


def timeout_until(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value)."""
    return max(deadline - time.monotonic(), _EXPIRED_S)


EmbedCall = Callable[[Sequence[Any], float, tuple], Awaitable[Any]]
InfoCall = Callable[[float], Awaitable[common_pb2.ModelInfo]]


class EncoderClient:
    """One encoder (text, vision or audio) behind one channel, and the model it is known to serve."""

    def __init__(
        self, name: str, channel: grpc.aio.Channel, embed_call: EmbedCall, info_call: InfoCall
    ) -> None:
        self.name = name
        self._channel = channel
        self._embed_call = embed_call
        self._info_call = info_call
        self._info: EncoderInfo | None = None  # read since the channel last connected
        self._last_known: EncoderInfo | None = None  # kept while the encoder is down, for listings
        self._watch: asyncio.Task | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The encoder's channel, for calls beyond embeddings (the inference protocol's NER, labels)."""
        return self._channel

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(
            self._forget_on_disconnect(), name=f"{self.name}-watch"
        )

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._channel.close()

    async def _forget_on_disconnect(self) -> None:
        state = self._channel.get_state(try_to_connect=False)
        while True:
            await self._channel.wait_for_state_change(state)
            # Waking from READY means the connection dropped, even if it is READY again by now.
            if state == grpc.ChannelConnectivity.READY and self._info is not None:
                _LOGGER.info("%s encoder disconnected; its model info will be read again", self.name)
                self._info = None
            state = self._channel.get_state(try_to_connect=False)

    def _remember(self, info: EncoderInfo) -> EncoderInfo:
        if self._last_known is not None and info != self._last_known:
            _LOGGER.warning(
                "%s encoder changed model",
                self.name,
                extra={
                    "fields": {"was": dataclasses.asdict(self._last_known), "now": dataclasses.asdict(info)}
                },
            )
        self._info = self._last_known = info
        return info

    async def model_info(self, deadline: float | None = None) -> EncoderInfo:
        """Reads the encoder's model info now (and remembers it)."""
        timeout = (
            MODEL_INFO_TIMEOUT_S if deadline is None else min(MODEL_INFO_TIMEOUT_S, timeout_until(deadline))
        )
        try:
            reply = await self._info_call(timeout)
        except grpc.aio.AioRpcError as error:
            raise self._upstream(error) from None
        return self._remember(EncoderInfo.of(reply))

    async def current_info(self, deadline: float) -> EncoderInfo:
        """The model served now: remembered since the last connect, else read (lazily)."""
        return self._info if self._info is not None else await self.model_info(deadline)

    async def refresh(self) -> EncoderInfo | None:
        """Re-reads the model info; on failure keeps what is known (the caller only lists it)."""
        with contextlib.suppress(UpstreamError):
            await self.model_info()
        return self._last_known

    async def embed(self, items: Sequence[Any], deadline: float) -> Embeddings:
        try:
            reply = await self._embed_call(items, timeout_until(deadline), _metadata())
        except grpc.aio.AioRpcError as error:
            raise self._upstream(error) from None
        vectors = from_matrix(reply.embeddings)
        if vectors.ndim != 2 or len(vectors) != len(items):
            raise UpstreamError(
                grpc.StatusCode.INTERNAL,
                f"{self.name} encoder returned shape {list(vectors.shape)} for {len(items)} items",
            )
        info = self._info
        if info is None or not info.produced(reply.model_id, vectors.shape[1]):
            info = await self.model_info(deadline)
            if not info.produced(reply.model_id, vectors.shape[1]):
                # Replicas answering with different models (a rolling update): refuse, don't guess.
                raise NotReady(
                    f"{self.name} encoder answered with {reply.model_id or 'a model'} of dim {vectors.shape[1]} "
                    f"but reports {info.model_id} of dim {info.embedding_dim}; it is changing models, retry"
                )
        return Embeddings(vectors, info)

    def _upstream(self, error: grpc.aio.AioRpcError) -> UpstreamError:
        return UpstreamError(error.code(), f"{self.name} encoder: {error.details() or error.code().name}")


class EncoderClients:
    """The encoders, one client per encoded modality (``services.fusion.modalities``); ``dns:///``
    targets spread calls over replicas (see services.common.channels). An encoder whose address
    is empty (audio, where no audio service runs) has no client."""

    def __init__(self, settings: FusionSettings) -> None:
        security = ChannelSecurity(
            settings.tls_ca_file,
            settings.tls_client_cert_file,
            settings.tls_client_key_file,
            settings.auth_token_file,
            # A channel replaced by rotated TLS files stays open for the calls still on it.
            rotation_grace_s=max(ROTATION_GRACE_S, settings.default_deadline_s),
        )
        info_request = common_pb2.GetModelInfoRequest()
        self.by_modality: dict[str, EncoderClient] = {}
        text_channel = create_aio_channel(settings.text_address, security)
        text = text_pb2_grpc.TextEncoderServiceStub(text_channel)
        self.text = self.by_modality["text"] = EncoderClient(
            "text",
            text_channel,
            lambda texts, timeout, metadata: text.Embed(
                text_pb2.EmbedTextRequest(texts=texts), timeout=timeout, metadata=metadata
            ),
            lambda timeout: text.GetModelInfo(info_request, timeout=timeout, metadata=_metadata()),
        )
        vision_channel = create_aio_channel(settings.vision_address, security)
        vision = vision_pb2_grpc.VisionEncoderServiceStub(vision_channel)
        self.image = self.by_modality["image"] = EncoderClient(
            "vision",
            vision_channel,
            lambda images, timeout, metadata: vision.Embed(
                vision_pb2.EmbedImageRequest(images=images), timeout=timeout, metadata=metadata
            ),
            lambda timeout: vision.GetModelInfo(info_request, timeout=timeout, metadata=_metadata()),
        )
        if settings.audio_address:
            audio_channel = create_aio_channel(settings.audio_address, security)
            audio = audio_pb2_grpc.AudioEncoderServiceStub(audio_channel)
            self.by_modality["audio"] = EncoderClient(
                "audio",
                audio_channel,
                lambda clips, timeout, metadata: audio.Embed(
                    audio_pb2.EmbedAudioRequest(clips=clips), timeout=timeout, metadata=metadata
                ),
                lambda timeout: audio.GetModelInfo(info_request, timeout=timeout, metadata=_metadata()),
            )
        self._default_deadline_s = settings.default_deadline_s

    @property
    def modalities(self) -> tuple[str, ...]:
        """The encoded modalities this service has an encoder for."""
        return tuple(self.by_modality)

    def deadline(self, remaining_s: float | None) -> float:
        """The absolute deadline of downstream calls: the caller's, or the configured default."""
        return time.monotonic() + (remaining_s if remaining_s is not None else self._default_deadline_s)

    async def embed(self, modality: str, items: Sequence[Any], deadline: float) -> Embeddings:
        return await self.by_modality[modality].embed(items, deadline)

    async def embed_texts(self, texts: Sequence[str], deadline: float) -> Embeddings:
        return await self.text.embed(texts, deadline)

    async def embed_images(self, images: Sequence[bytes], deadline: float) -> Embeddings:
        return await self.image.embed(images, deadline)

    async def refresh_infos(self) -> dict[str, EncoderInfo | None]:
        """Re-reads every encoder's model info; an unreachable one keeps its last known info."""
        infos = await asyncio.gather(*(client.refresh() for client in self.by_modality.values()))
        return dict(zip(self.by_modality, infos, strict=True))

    def start(self) -> None:
        for client in self.by_modality.values():
            client.start()

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.by_modality.values()))
