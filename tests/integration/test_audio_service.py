"""The audio encoder as a separate process over real gRPC, with the default real model (YAMNet)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from mmserve.v1 import audio_pb2, audio_pb2_grpc, common_pb2
from scripts.stack import ServiceProcess, health_status
from services.audio.decoding import AudioLimits
from services.audio.features import log_mel_patches
from services.audio.pipeline import embed_in_process
from services.audio.yamnet import YamnetModel
from services.common.matrix import from_matrix
from services.common.pooling import l2_normalised
from tests.support.media import ffmpeg_audio, sound_file, tone, wav_header, white_noise

RATE = 16_000


def clips_in_every_format() -> dict[str, bytes]:
    """Different sounds in each supported format, at rates and channel counts that need resampling and mixing."""
    t44 = np.arange(int(1.7 * 44_100)) / 44_100
    chirp = 0.4 * np.sin(2 * np.pi * (200 + 600 * t44) * t44)
    stereo = np.stack([chirp, 0.3 * np.sign(np.sin(2 * np.pi * 3 * t44))], -1)
    return {
        "wav-44k-stereo": sound_file(stereo.astype(np.float32), 44_100, "WAV", "PCM_16"),
        "flac-16k": sound_file(tone(880, 2.5, RATE, 0.5), RATE, "FLAC"),
        "ogg-vorbis-22k": sound_file(white_noise(1.2, 22_050) * 0.2, 22_050, "OGG", "VORBIS"),
        "mp3-44k": ffmpeg_audio(tone(330, 2.0, 44_100, 0.6), 44_100, "mp3", "mp3"),
        "m4a-aac-48k": ffmpeg_audio(tone(660, 1.0, 48_000, 0.6) * np.linspace(0, 1, 48_000), 48_000, "ipod", "aac"),
        "wav-short-0.2s": sound_file(tone(1000, 0.2, 8_000, 0.5), 8_000, "WAV"),
    }  # fmt: skip


CLIPS = clips_in_every_format()


@pytest.fixture(scope="module")
def stub(audio_service: ServiceProcess):
    with grpc.insecure_channel(audio_service.address) as channel:
        yield audio_pb2_grpc.AudioEncoderServiceStub(channel)


@pytest.fixture(scope="module")
def in_process() -> YamnetModel:
    model = YamnetModel(device="cpu")
    model.load()
    return model


def embed(stub, clips: list[bytes], segments: bool = False) -> audio_pb2.EmbedAudioResponse:
    return stub.Embed(audio_pb2.EmbedAudioRequest(clips=clips, include_segments=segments), timeout=60)


def classify(stub, clips: list[bytes], top_k: int = 0) -> list[list[tuple[str, float]]]:
    reply = stub.Classify(audio_pb2.ClassifyAudioRequest(clips=clips, top_k=top_k), timeout=60)
    assert reply.model_id == "yamnet"
    return [[(s.label, s.score) for s in result.labels] for result in reply.results]


def test_served_embeddings_equal_the_in_process_model(stub, in_process: YamnetModel) -> None:
    reply = embed(stub, list(CLIPS.values()))
    served = from_matrix(reply.embeddings)
    local = embed_in_process(in_process, list(CLIPS.values()), AudioLimits())
    assert served.shape == (len(CLIPS), 1024) and reply.model_id == "yamnet"
    cosines = np.sum(served * local, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1)
    )
    assert cosines.min() >= 0.9999, dict(zip(CLIPS, cosines.round(6), strict=True))
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    similarity = served @ served.T
    assert similarity[~np.eye(len(CLIPS), dtype=bool)].max() < 0.99, "different sounds, different vectors"
    np.testing.assert_allclose(reply.duration_s, [1.7, 2.5, 1.2, 2.0, 1.0, 0.2], atol=0.05)


def test_a_batch_equals_single_calls(stub) -> None:
    batch = from_matrix(embed(stub, list(CLIPS.values())).embeddings)
    singles = np.vstack([from_matrix(embed(stub, [clip]).embeddings) for clip in CLIPS.values()])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_segments_are_the_patches_with_their_time_spans(stub, in_process: YamnetModel) -> None:
    waveform = tone(440, 3.0, RATE, 0.5)
    reply = embed(stub, [sound_file(waveform, RATE, "WAV", "FLOAT")], segments=True)
    (segments,) = reply.segments
    starts, ends = np.array(segments.start_s), np.array(segments.end_s)
    # YAMNet pads 3 s to 0.975 s + 5 hops of 0.48 s: six 0.96 s patches, the last ones cut at the clip's end.
    np.testing.assert_allclose(starts, np.arange(6) * 0.48, atol=1e-6)
    np.testing.assert_allclose(ends, np.minimum(starts + 0.96, 3.0), atol=1e-6)
    rows = from_matrix(segments.embeddings)
    local = in_process.forward(list(log_mel_patches(waveform))).embeddings
    np.testing.assert_allclose(rows, l2_normalised(local), atol=1e-5)
    np.testing.assert_allclose(from_matrix(reply.embeddings)[0], l2_normalised(local.mean(axis=0)), atol=1e-5)


def test_sounds_land_in_the_audioset_classes_yamnet_gives(stub) -> None:
    """The signals of YAMNet's own installation test (yamnet_test.py: a 440 Hz sine, uniform noise,
    zeros), as 16-bit WAV. YAMNet hears the pure tone as telephony: its top four are these
    tonal classes, and "Sine wave" is in its top 10, which is what yamnet_test.py asserts."""
    sine, noise, silence = (
        sound_file(x, RATE, "WAV", "PCM_16") for x in (tone(440, 3.0), white_noise(3.0), np.zeros(3 * RATE))
    )
    sine_top, noise_top, silence_top = classify(stub, [sine, noise, silence], top_k=10)
    assert {label for label, _ in sine_top[:4]} == {"Telephone", "Dial tone", "Busy signal", "Alarm"}, (
        sine_top
    )
    assert sine_top[0][1] > 0.9 and "Sine wave" in [label for label, _ in sine_top]
    assert noise_top[0][0] == "White noise", noise_top
    assert {"Static", "Noise"} & {label for label, _ in noise_top[:5]}, noise_top
    assert silence_top[0][0] == "Silence" and silence_top[0][1] > 0.99, silence_top
    assert silence_top[1][1] < 0.01


def test_classify_scores_are_independent_per_label_and_top_k_is_validated(stub) -> None:
    (labels,) = classify(stub, [CLIPS["flac-16k"]])
    assert len(labels) == 5 and [s for _, s in labels] == sorted((s for _, s in labels), reverse=True)
    (three,) = classify(stub, [CLIPS["flac-16k"]], top_k=3)
    assert three == labels[:3]
    with pytest.raises(grpc.RpcError) as caught:
        classify(stub, [CLIPS["flac-16k"]], top_k=-1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in caught.value.details()


def test_model_info_reports_yamnet_and_its_labels(stub) -> None:
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(include_labels=True), timeout=10)
    assert (info.model_id, info.embedding_dim, info.modality) == ("yamnet", 1024, common_pb2.MODALITY_AUDIO)
    assert info.device == "cpu" and info.dtype == "float32" and info.revision.startswith("sha256:")
    tasks = {t.task: t for t in info.tasks}
    assert set(tasks) == {"embed", "classify"} and tasks["classify"].num_labels == 521
    assert tasks["classify"].labels[:2] == ["Speech", "Child speech, kid speaking"]


ONE_SECOND = sound_file(tone(440, 1.0, RATE, 0.5), RATE, "WAV", "PCM_16")
HOSTILE = {
    "truncated-wav": (ONE_SECOND[: len(ONE_SECOND) // 2], "WAV audio is truncated"),
    "header-only-wav": (ONE_SECOND[:30], "WAV audio is truncated or malformed"),
    "zero-samples": (wav_header(RATE, data_bytes=0), "WAV audio has no samples"),
    "ten-hour-header": (wav_header(RATE, data_bytes=10 * 3600 * RATE * 2) + ONE_SECOND[44:], "36000.0 s long"),
    "1-mhz-rate": (wav_header(1_000_000, data_bytes=2000) + bytes(2000), "sample rate 1000000 Hz is outside"),
    "9-channels": (wav_header(RATE, channels=9, data_bytes=18 * 100) + bytes(18 * 100), "9 channels; the limit is 8"),
    "png-bytes": (b"\x89PNG\r\n\x1a\n" + bytes(100), "the bytes are a PNG image"),
    "text-bytes": (b"these are not the bytes you are looking for", "not a recognised WAV"),
    "empty": (b"", "audio is empty"),
    "broken-mp3": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8, "MP3"),
    "broken-ogg": (b"OggS" + bytes(range(256)) * 4, "could not decode OGG audio"),
    "broken-flac": (b"fLaC" + bytes(64), "could not decode FLAC audio"),
    "broken-m4a": (b"\x00\x00\x00\x18ftypM4A " + bytes(64), "M4A"),
    "nan-float-wav": (sound_file(np.full(1000, np.nan, np.float32), RATE, "WAV", "FLOAT"), "NaN or infinite"),
}  # fmt: skip


@pytest.mark.parametrize(("clip", "message"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_audio_is_invalid_argument_and_the_service_keeps_serving(
    stub, audio_service: ServiceProcess, clip: bytes, message: str
) -> None:
    began = time.perf_counter()
    for rpc in (stub.Embed, stub.Classify):
        request = (audio_pb2.EmbedAudioRequest if rpc is stub.Embed else audio_pb2.ClassifyAudioRequest)(
            clips=[ONE_SECOND, clip]
        )
        with pytest.raises(grpc.RpcError) as caught:
            rpc(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "clips[1]" in caught.value.details() and message in caught.value.details(), (
            caught.value.details()
        )
    assert time.perf_counter() - began < 10
    assert health_status(audio_service.address) == 1  # SERVING
    assert from_matrix(embed(stub, [ONE_SECOND]).embeddings).shape == (1, 1024)


def test_request_limits_are_invalid_argument(stub) -> None:
    for clips, message in (([], "at least one clip"), ([ONE_SECOND] * 9, "too many clips: 9 (limit 8")):
        with pytest.raises(grpc.RpcError) as caught:
            embed(stub, clips)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_a_bad_clip_fails_only_its_own_request_under_concurrency(stub) -> None:
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(embed, stub, [CLIPS["mp3-44k"], ONE_SECOND]) for _ in range(6)]
        bad = [pool.submit(embed, stub, [ONE_SECOND, HOSTILE["truncated-wav"][0]]) for _ in range(6)]
        assert all(from_matrix(f.result().embeddings).shape == (2, 1024) for f in good)
        for future in bad:
            with pytest.raises(grpc.RpcError) as caught:
                future.result()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_long_clip_is_served_in_chunks_of_one_forward_pass(stub, in_process: YamnetModel) -> None:
    """A 100 s clip is 208 patches: several forward passes of at most max_batch_size (64), same result."""
    noise = white_noise(100.0, RATE, seed=5) * 0.1
    clip = sound_file(noise, RATE, "FLAC")
    served = from_matrix(embed(stub, [clip]).embeddings)
    local = embed_in_process(in_process, [clip], AudioLimits())
    assert float(served[0] @ local[0]) >= 0.9999


def test_serving_only_after_warm_up_and_a_clean_exit_on_sigterm(log_dir) -> None:
    from scripts.stack import start_service
    from tests.support.metrics import sample_value, scrape

    service = start_service("audio", log_dir=log_dir, wait=False)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = health_status(service.address, timeout_s=0.5)
            if status is not None and (not seen or seen[-1] != status):
                seen.append(status)
            if status == 1:  # SERVING
                break
            time.sleep(0.01)
        assert seen and seen[-1] == 1, f"never SERVING: {service.log_tail()}"
        warm = scrape(f"http://127.0.0.1:{service.metrics_port}/metrics")
        for task in ("embed", "classify"):
            assert sample_value(warm, "mmserve_inference_duration_seconds_count", task=task) >= 1, task
    finally:
        assert service.stop() == 0, service.log_tail()
    assert "audio stopped" in service.log_tail()
