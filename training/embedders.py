"""Text, image and audio embeddings for training heads: one small client interface, in-process or over gRPC.

``InProcessEmbedder`` runs the very ModelBackends the encoder services batch for, and prepares
images on the service's own path (``prepare_batch``: serving limits, JPEG draft scaling) and
audio on the audio service's (``services.audio.pipeline``: decode, mono, resample, segments,
mean-pooling), so an in-process head sees the embeddings serving will feed it. The audio model
loads on first use: heads without audio never load it. ``GrpcEmbedder`` asks running encoder
services. Both report which encoder models they use; heads record that and the fusion service
refuses heads trained on other encoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Protocol

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
from services.common.channels import ChannelSecurity, create_channel
from services.common.errors import InvalidInput, MmserveError, NotReady
from services.common.matrix import from_matrix
from services.common.settings import AudioSettings, FusionSettings, VisionSettings
from services.vision.decoding import ImageLimits


class Embedder(Protocol):
    text_info: EncoderInfo
    image_info: EncoderInfo

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), text_info.embedding_dim] float32."""
        ...

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded image files -> [len(images), image_info.embedding_dim] float32."""
        ...

    def close(self) -> None: ...


class AudioEmbedder(Embedder, Protocol):
    """An embedder that also embeds audio (asked for ``audio_info`` only when a head reads audio)."""

    audio_info: EncoderInfo

    def embed_audio(self, clips: Sequence[bytes]) -> np.ndarray:
        """Encoded audio files -> [len(clips), audio_info.embedding_dim] float32."""
        ...


# How an embedder embeds each encoded modality, and where it says which model does.
_EMBED_METHODS = {"text": "embed_texts", "image": "embed_images", "audio": "embed_audio"}


def encoder_info(embedder: Embedder, modality: str) -> EncoderInfo:
    """The model that embeds ``modality`` (loading it, for an in-process audio model)."""
    return getattr(embedder, f"{modality}_info")


def embed_with(embedder: Embedder, modality: str, items: Sequence) -> np.ndarray:
    """``items`` of ``modality`` -> [len(items), dim] float32."""
    return getattr(embedder, _EMBED_METHODS[modality])(items)


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stack(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


class InProcessEmbedder:
    """Runs the text and vision backends in this process (CPU by default)."""

    def __init__(
        self,
        text_model: str = "",
        vision_model: str = "",
        device: str = "cpu",
        batch_size: int = 32,
        audio_model: str = "",
    ) -> None:
        # Imported here: torch and transformers load only when this embedder is chosen.
        from services.text.embedding import TextEmbedder
        from services.vision.backend import ImageEmbedding, create_model

        settings = VisionSettings(model=vision_model, device=device, dtype="float32")
        self._limits = ImageLimits.from_settings(settings)
        self._batch_size = batch_size
        self._text = TextEmbedder(text_model, device=device, dtype="float32")
        self._vision = create_model(settings)
        self._image = ImageEmbedding(self._vision)
        self.text_info = EncoderInfo.of(self._text.load())
        self.image_info = EncoderInfo.of(self._image.load())
        self._audio_settings = AudioSettings(model=audio_model, device=device, dtype="float32")

    @cached_property
    def _audio(self):
        from services.audio.backend import create_model

        return create_model(self._audio_settings)

    @cached_property
    def audio_info(self) -> EncoderInfo:
        return EncoderInfo.of(self._audio.load())

    def embed_audio(self, clips: Sequence[bytes]) -> np.ndarray:
        from services.audio.decoding import AudioLimits
        from services.audio.pipeline import embed_in_process

        limits = AudioLimits.from_settings(self._audio_settings)
        dim = self.audio_info.embedding_dim  # loads the model
        parts = [
            embed_in_process(self._audio, list(batch), limits) for batch in _batches(clips, self._batch_size)
        ]
        return _stack(parts, dim)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        parts = [self._text.process(list(batch)).vectors for batch in _batches(texts, self._batch_size)]
        return _stack(parts, self.text_info.embedding_dim)

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        from services.vision.preprocessing import prepare_batch

        parts = [
            self._image.process(list(prepare_batch(batch, self._limits, self._vision.transform)))
            for batch in _batches(images, self._batch_size)
        ]
        return _stack(parts, self.image_info.embedding_dim)

    def close(self) -> None:
        pass


class GrpcEmbedder:
    """Calls running TextEncoderService, VisionEncoderService (and, for audio, AudioEncoderService)
    instances, in batches."""

    def __init__(
        self,
        text_address: str,
        vision_address: str,
        deadline_s: float = 60.0,
        batch_size: int = 32,
        security: ChannelSecurity | None = None,
        audio_address: str = FusionSettings.audio_address,
    ) -> None:
        self._deadline_s = deadline_s
        self._batch_size = batch_size
        self._channels = [create_channel(text_address, security), create_channel(vision_address, security)]
        self._text = text_pb2_grpc.TextEncoderServiceStub(self._channels[0])
        self._vision = vision_pb2_grpc.VisionEncoderServiceStub(self._channels[1])
        self._addresses = {"text": text_address, "image": vision_address, "audio": audio_address}
        self._security = security
        request = common_pb2.GetModelInfoRequest()
        text = self._call("text", self._text.GetModelInfo, request)
        image = self._call("image", self._vision.GetModelInfo, request)
        self.text_info = EncoderInfo.of(text)
        self.image_info = EncoderInfo.of(image)

    def _call(self, modality: str, method, request):
        try:
            return method(request, timeout=self._deadline_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            where = f"{modality} encoder at {self._addresses[modality]}"
            message = f"{where}: {exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInput(message) from None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise NotReady(message) from None
            raise MmserveError(message) from None

    def _decode(self, matrix, rows: int, dim: int, modality: str) -> np.ndarray:
        array = from_matrix(matrix)
        if array.shape != (rows, dim):
            raise MmserveError(
                f"{modality} encoder returned shape {list(array.shape)}, expected [{rows}, {dim}]"
            )
        return array

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        parts = []
        for batch in _batches(texts, self._batch_size):
            reply = self._call("text", self._text.Embed, text_pb2.EmbedTextRequest(texts=list(batch)))
            parts.append(self._decode(reply.embeddings, len(batch), self.text_info.embedding_dim, "text"))
        return _stack(parts, self.text_info.embedding_dim)

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        parts = []
        for batch in _batches(images, self._batch_size):
            reply = self._call("image", self._vision.Embed, vision_pb2.EmbedImageRequest(images=list(batch)))
            parts.append(self._decode(reply.embeddings, len(batch), self.image_info.embedding_dim, "image"))
        return _stack(parts, self.image_info.embedding_dim)

    @cached_property
    def _audio(self) -> audio_pb2_grpc.AudioEncoderServiceStub:
        channel = create_channel(self._addresses["audio"], self._security)
        self._channels.append(channel)
        return audio_pb2_grpc.AudioEncoderServiceStub(channel)

    @cached_property
    def audio_info(self) -> EncoderInfo:
        return EncoderInfo.of(self._call("audio", self._audio.GetModelInfo, common_pb2.GetModelInfoRequest()))

    def embed_audio(self, clips: Sequence[bytes]) -> np.ndarray:
        dim = self.audio_info.embedding_dim
        parts = []
        for batch in _batches(clips, AudioSettings.max_items_per_request):
            reply = self._call("audio", self._audio.Embed, audio_pb2.EmbedAudioRequest(clips=list(batch)))
            parts.append(self._decode(reply.embeddings, len(batch), dim, "audio"))
        return _stack(parts, dim)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
