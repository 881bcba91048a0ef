"""Audio and video over REST through the real processes and default models: the routes answer what
the encoders answer over gRPC, as JSON base64 or multipart uploads, and refuse bad media with 400."""

from __future__ import annotations

import base64
import json
import urllib.request

import grpc
import numpy as np
import pytest

from mmserve.v1 import audio_pb2, audio_pb2_grpc, vision_pb2, vision_pb2_grpc
from scripts.stack import ServiceProcess
from services.common.matrix import from_matrix
from tests.support.media import pattern_frame, sound_file, tone, video_file
from tests.support.traffic import post_json

pytestmark = pytest.mark.slow

CLIP = sound_file(tone(440, 2.0, 22_050, 0.5), 22_050, "WAV")
SILENCE = sound_file(np.zeros(16_000), 16_000, "FLAC")
VIDEO = video_file([pattern_frame(i) for i in range(8)], fps=4)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ok(url: str, payload: dict | None) -> dict:
    outcome = post_json(url, payload, timeout_s=60)
    assert outcome.status == 200, outcome.body[:300]
    return json.loads(outcome.body)


def upload(url: str, field: str, files: list[bytes], **form: str) -> dict:
    boundary = "mmserve-media-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in form.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="f{i}"\r\n'.encode()
        + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        for i, data in enumerate(files)
    ]  # fmt: skip
    request = urllib.request.Request(
        url,
        data=b"".join(parts) + f"--{boundary}--\r\n".encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def grpc_embeddings(audio_service: ServiceProcess, vision_service: ServiceProcess) -> dict[str, np.ndarray]:
    with grpc.insecure_channel(audio_service.address) as channel:
        audio = audio_pb2_grpc.AudioEncoderServiceStub(channel).Embed(
            audio_pb2.EmbedAudioRequest(clips=[CLIP, SILENCE]), timeout=60
        )
    with grpc.insecure_channel(vision_service.address) as channel:
        video = vision_pb2_grpc.VisionEncoderServiceStub(channel).EmbedVideo(
            vision_pb2.EmbedVideoRequest(videos=[VIDEO], num_frames=4), timeout=60
        )
    return {"audio": from_matrix(audio.embeddings), "video": from_matrix(video.embeddings)}


def test_audio_routes_answer_what_the_audio_service_answers(
    gateway_service: ServiceProcess, grpc_embeddings
) -> None:
    url = gateway_service.url
    body = ok(url + "/v1/embed/audio", {"clips": [b64(CLIP), b64(SILENCE)], "include_segments": True})
    assert body["model"] == "yamnet" and np.array(body["embeddings"]).shape == (2, 1024)
    np.testing.assert_allclose(body["embeddings"], grpc_embeddings["audio"], atol=1e-6)
    np.testing.assert_allclose(body["duration_s"], [2.0, 1.0], atol=1e-3)
    assert [len(s["start_s"]) for s in body["segments"]] == [4, 2]
    uploaded = upload(url + "/v1/embed/audio", "audio", [CLIP, SILENCE])
    np.testing.assert_allclose(uploaded["embeddings"], body["embeddings"], atol=1e-7)
    labels = ok(url + "/v1/classify/audio", {"clips": [b64(SILENCE)], "top_k": 2})["results"][0]["labels"]
    assert labels[0]["label"] == "Silence" and len(labels) == 2
    assert (
        upload(url + "/v1/classify/audio", "audio", [SILENCE], top_k="1")["results"][0]["labels"]
        == labels[:1]
    )


def test_video_route_answers_what_the_vision_service_answers(
    gateway_service: ServiceProcess, grpc_embeddings
) -> None:
    url = gateway_service.url
    body = ok(url + "/v1/embed/video", {"videos": [b64(VIDEO)], "num_frames": 4, "include_frames": True})
    np.testing.assert_allclose(body["embeddings"], grpc_embeddings["video"], atol=1e-6)
    assert body["num_frames"] == [4] and body["duration_s"] == [2.0]
    assert body["frames"][0]["timestamps_s"] == [0.25, 0.75, 1.25, 1.75]
    uploaded = upload(url + "/v1/embed/video", "video", [VIDEO], num_frames="4")
    np.testing.assert_allclose(uploaded["embeddings"], body["embeddings"], atol=1e-7)
    assert "frames" not in uploaded


def test_openai_route_mixes_text_audio_and_video(gateway_service: ServiceProcess, grpc_embeddings) -> None:
    items = ["a dog barking", {"type": "audio", "audio": b64(CLIP)}, {"type": "video", "video": b64(VIDEO)}]
    body = ok(gateway_service.url + "/v1/embeddings", {"input": items, "encoding_format": "base64"})
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]]
    assert [r.size for r in rows] == [384, 1024, 1280]
    np.testing.assert_array_equal(rows[1], grpc_embeddings["audio"][0])
    # The openai route leaves sampling to the vision service's default (8 frames): all 8 of this clip.
    assert float(rows[2] @ grpc_embeddings["video"][0]) > 0.9
    assert body["model"].endswith("all-MiniLM-L6-v2+yamnet+efficientnet-lite0")


@pytest.mark.parametrize(
    ("route", "payload", "message"),
    [
        ("/v1/embed/audio", {"clips": [b64(CLIP[: len(CLIP) // 2])]}, "clips[0]: WAV audio is truncated"),
        ("/v1/classify/audio", {"clips": [b64(b"not audio at all")]}, "not a recognised WAV"),
        ("/v1/embed/video", {"videos": [b64(CLIP)]}, "videos[0]: could not read video"),
        ("/v1/embeddings", {"input": [{"type": "video", "video": b64(b"\x1a\x45\xdf\xa3")}]}, "videos[0]"),
    ],
)
def test_bad_media_is_a_400_naming_the_item(gateway_service: ServiceProcess, route, payload, message) -> None:
    outcome = post_json(gateway_service.url + route, payload, timeout_s=60)
    error = json.loads(outcome.body)["error"]
    assert outcome.status == 400 and error["status"] == "INVALID_ARGUMENT" and message in error["message"], (
        error
    )


def test_readiness_and_models_include_audio(gateway_service: ServiceProcess) -> None:
    ready = ok(gateway_service.url + "/readyz", None)
    assert ready["backends"]["audio"] == "SERVING"
    models = ok(gateway_service.url + "/v1/models", None)["data"]
    audio = [m for m in models if m["modality"] == "audio"]
    assert [(m["id"], m["task"]) for m in audio] == [("yamnet", "embed"), ("yamnet", "classify")]
    assert audio[0]["embedding_dim"] == 1024 and audio[1]["num_labels"] == 521
