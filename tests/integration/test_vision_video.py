"""EmbedVideo on the vision service as a separate process over real gRPC, with the default real
model: videos the test encodes with PyAV, sampled, embedded through the image pipeline, pooled."""

from __future__ import annotations

import io
import time
from fractions import Fraction

import grpc
import numpy as np
import pytest
from PIL import Image

from mmserve.v1 import vision_pb2, vision_pb2_grpc
from scripts.stack import ServiceProcess, health_status
from services.common.matrix import from_matrix
from services.common.pooling import mean_pooled
from tests.support.media import decoded_frames, ffmpeg_audio, pattern_frame, tone, video_file

FRAMES = [pattern_frame(i) for i in range(12)]
H264 = video_file(FRAMES, fps=8, codec="libx264", container="mp4")  # 1.5 s


@pytest.fixture(scope="module")
def stub(vision_service: ServiceProcess):
    with grpc.insecure_channel(vision_service.address) as channel:
        yield vision_pb2_grpc.VisionEncoderServiceStub(channel)


def embed_video(stub, videos: list[bytes], **sampling) -> vision_pb2.EmbedVideoResponse:
    request = vision_pb2.EmbedVideoRequest(videos=videos, include_frames=True, **sampling)
    return stub.EmbedVideo(request, timeout=60)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_embeddings(stub, pixels: list[np.ndarray]) -> np.ndarray:
    reply = stub.Embed(vision_pb2.EmbedImageRequest(images=[png(p) for p in pixels]), timeout=60)
    return from_matrix(reply.embeddings)


def test_a_clip_embeds_as_the_mean_of_its_frames_embeddings(stub) -> None:
    """Every frame sampled: each is embedded exactly as the same decoded frame sent as a PNG image,
    and the clip's vector is their mean, re-normalised."""
    reply = embed_video(stub, [H264], num_frames=12)
    decoded = decoded_frames(H264)
    assert len(decoded) == 12 and list(reply.num_frames) == [12]
    (frames,) = reply.frames
    np.testing.assert_allclose(frames.timestamps_s, [t for t, _ in decoded], atol=1e-6)
    np.testing.assert_allclose(frames.timestamps_s, np.arange(12) / 8, atol=1e-6)
    as_images = image_embeddings(stub, [pixels for _, pixels in decoded])
    np.testing.assert_allclose(from_matrix(frames.embeddings), as_images, atol=1e-5)
    clip = from_matrix(reply.embeddings)[0]
    assert float(clip @ mean_pooled(as_images)) >= 0.9999
    assert reply.duration_s[0] == pytest.approx(1.5, abs=1e-3) and reply.model_id == "efficientnet-lite0"


def test_sampling_uniform_k_or_n_per_second_across_containers_and_codecs(stub) -> None:
    webm = video_file(FRAMES, fps=8, codec="libvpx-vp9", container="webm")
    mpeg4 = video_file(FRAMES, fps=8, codec="mpeg4", container="mp4")
    reply = embed_video(stub, [H264, webm, mpeg4], num_frames=4)
    assert list(reply.num_frames) == [4, 4, 4]
    for frames in reply.frames:  # the middle frame of four equal stretches of 12
        np.testing.assert_allclose(frames.timestamps_s, [0.125, 0.5, 0.875, 1.25], atol=1e-6)
    for video, clip in zip((webm, mpeg4), from_matrix(reply.embeddings)[1:], strict=True):
        chosen = [pixels for _, pixels in decoded_frames(video)][1::3]  # frames 1, 4, 7, 10
        assert float(clip @ mean_pooled(image_embeddings(stub, chosen))) >= 0.9999
    per_second = embed_video(stub, [H264], frames_per_second=2.0)
    np.testing.assert_allclose(per_second.frames[0].timestamps_s, [0.0, 0.5, 1.0], atol=1e-6)
    default = stub.EmbedVideo(vision_pb2.EmbedVideoRequest(videos=[H264]), timeout=60)
    assert list(default.num_frames) == [8] and not default.frames


def pixel_bomb() -> bytes:
    """One 8K frame (33 M pixels) in 8 kB: refused from the header, before decoding."""
    return video_file([np.zeros((4320, 7680, 3), np.uint8)], fps=1)


def frame_bomb() -> bytes:
    """36,001 tiny identical frames at 1000 fps: 36 s of video, cheap to store, expensive to decode."""
    return video_file([np.zeros((16, 16, 3), np.uint8)] * 36_001, fps=1000)


def endless() -> bytes:
    """Two frames 400 s apart: 800 s of video."""
    return video_file(FRAMES[:2], fps=Fraction(1, 400))


HOSTILE = {
    "pixel-bomb": (pixel_bomb, "7680x4320 = 33177600 pixels; the limit is 8294400"),
    "frame-bomb": (frame_bomb, "more than 36000 frames"),
    "huge-duration": (endless, "800.0 s long; the limit is 600 s"),
    "png-not-video": (lambda: png(FRAMES[0]), "not a recognised MP4/MOV or WebM/Matroska"),
    "text-not-video": (lambda: b"just some text, not a video at all", "not a recognised"),
    "mp4-audio-only": (lambda: ffmpeg_audio(tone(440, 1.0), 16_000, "ipod", "aac"), "has no video stream"),
    "truncated-mp4": (lambda: H264[: len(H264) // 3], "could not decode MP4 video"),
    "empty": (lambda: b"", "video is empty"),
}


@pytest.mark.parametrize(("make", "message"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_video_is_invalid_argument_and_the_service_keeps_serving(
    stub, vision_service: ServiceProcess, make, message: str
) -> None:
    video = make()
    began = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        embed_video(stub, [H264, video], num_frames=4)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "videos[1]" in caught.value.details() and message in caught.value.details(), caught.value.details()
    assert time.perf_counter() - began < 10
    assert health_status(vision_service.address) == 1  # SERVING
    assert list(embed_video(stub, [H264], num_frames=2).num_frames) == [2]


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"num_frames": 2, "frames_per_second": 1.0}, "not both"),
        ({"num_frames": 65}, "num_frames is 65; the limit is 64"),
        ({"frames_per_second": 50.0}, "75 frames; the limit is 64"),
        ({"num_frames": -1}, "must be positive"),
    ],
)
def test_sampling_requests_beyond_the_limits_are_refused(stub, sampling: dict, message: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        embed_video(stub, [H264], **sampling)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        embed_video(stub, [H264] * 5)
    assert "too many videos: 5 (limit 4" in caught.value.details()
