"""The audio service with other models, selected by path: a transformers wav2vec2 encoder, a
wav2vec2 audio classifier and a waveform ONNX graph, each tiny, random and built by the test."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from mmserve.v1 import audio_pb2, audio_pb2_grpc, common_pb2
from scripts.stack import ServiceProcess, start_service
from services.audio.decoding import AudioLimits
from services.audio.onnx_waveform import OnnxWaveformModel
from services.audio.pipeline import embed_in_process
from services.audio.transformers_backend import TransformersAudioModel
from services.common.matrix import from_matrix
from tests.support.media import sound_file, tone, white_noise

LABELS = ["dog", "cat", "bird"]


def tiny_wav2vec2(directory: Path, classifier: bool) -> Path:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
        Wav2Vec2Model,
    )

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, classifier_proj_size=8,
        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
    )  # fmt: skip
    model = (Wav2Vec2ForSequenceClassification if classifier else Wav2Vec2Model)(config).eval()
    model.save_pretrained(directory)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16_000, do_normalize=True, return_attention_mask=False)
    extractor.save_pretrained(directory)
    return directory


def tiny_clap(directory: Path) -> Path:
    """A CLAP pair (HTSAT audio tower, 8-d projection) small enough to build in a test."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    torch.manual_seed(0)
    audio = dict(
        window_size=4, num_mel_bins=16, spec_size=32, patch_size=4, patch_stride=(4, 4),
        patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
        num_hidden_layers=2, projection_dim=8, enable_fusion=False,
    )  # fmt: skip
    text = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, projection_dim=8, max_position_embeddings=64)  # fmt: skip
    ClapModel(ClapConfig(audio_config=audio, text_config=text, projection_dim=8)).eval().save_pretrained(
        directory
    )
    ClapFeatureExtractor(
        feature_size=16, sampling_rate=16_000, hop_length=640, max_length_s=2, fft_window_size=1024,
        frequency_min=50, frequency_max=8000, truncation="rand_trunc", padding="repeatpad",
    ).save_pretrained(directory)  # fmt: skip
    return directory


def tiny_onnx_encoder(path: Path, sample_rate_hz: int = 8_000) -> Path:
    """[batch, samples] -> Conv1d(1 -> 8, kernel 200, stride 80) -> tanh -> [batch, frames, 8]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 1, 200)).astype(np.float32) * 0.1, "w")
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    nodes = [
        helper.make_node("Unsqueeze", ["waveform", "axis"], ["channels"]),
        helper.make_node("Conv", ["channels", "w"], ["conv"], kernel_shape=[200], strides=[80]),
        helper.make_node("Tanh", ["conv"], ["activated"]),
        helper.make_node("Transpose", ["activated"], ["hidden"], perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny-audio",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "frames", 8])],
        [weight, axis],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, {"sample_rate_hz": str(sample_rate_hz)})
    onnx.checker.check_model(model)
    onnx.save_model(model, path)
    return path


CLIPS = [
    sound_file(tone(440, 2.0, 16_000, 0.5), 16_000, "WAV"),
    sound_file(white_noise(3.3, 22_050) * 0.3, 22_050, "FLAC"),
    sound_file(tone(220, 0.4, 44_100, 0.8), 44_100, "WAV"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio-models")
    return {
        "encoder": tiny_wav2vec2(root / "wav2vec2", classifier=False),
        "classifier": tiny_wav2vec2(root / "wav2vec2-classifier", classifier=True),
        "onnx": tiny_onnx_encoder(root / "tiny-audio.onnx"),
    }


@pytest.fixture(scope="module")
def served(models: dict[str, Path], log_dir: Path):
    """One audio service per model (2 s windows, so clips span several), started in parallel."""
    services = {
        name: start_service(
            "audio", args=["--model", str(path), "--segment-seconds", "2"], log_dir=log_dir, wait=False
        )
        for name, path in models.items()
    }
    try:
        for service in services.values():
            service.wait_ready(180)
        yield services
    finally:
        for service in services.values():
            service.stop()


def stub_of(service: ServiceProcess) -> tuple[grpc.Channel, audio_pb2_grpc.AudioEncoderServiceStub]:
    channel = grpc.insecure_channel(service.address)
    return channel, audio_pb2_grpc.AudioEncoderServiceStub(channel)


def in_process(name: str, path: Path):
    if name == "onnx":
        model = OnnxWaveformModel(str(path), segment_seconds=2.0, device="cpu")
    else:
        model = TransformersAudioModel(str(path), segment_seconds=2.0, device="cpu", dtype="float32")
    return model, model.load()


@pytest.mark.parametrize("name", ["encoder", "classifier", "onnx"])
def test_a_model_selected_by_path_serves_what_it_computes_in_process(name, models, served) -> None:
    model, description = in_process(name, models[name])
    channel, stub = stub_of(served[name])
    with channel:
        reply = stub.Embed(audio_pb2.EmbedAudioRequest(clips=CLIPS, include_segments=True), timeout=60)
        singles = [stub.Embed(audio_pb2.EmbedAudioRequest(clips=[clip]), timeout=60) for clip in CLIPS]
        info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    vectors = from_matrix(reply.embeddings)
    local = embed_in_process(model, CLIPS, AudioLimits())
    assert vectors.shape == (3, description.embedding_dim)
    assert (np.sum(vectors * local, axis=1) >= 0.9999).all()
    # A batch (windows of several lengths in one forward pass) answers what single calls do.
    np.testing.assert_allclose(vectors, np.vstack([from_matrix(s.embeddings) for s in singles]), atol=1e-5)
    # 2 s windows: 2.0 s -> one, 3.3 s -> two (2 + 1.3), 0.4 s -> one.
    assert [len(s.start_s) for s in reply.segments] == [1, 2, 1]
    np.testing.assert_allclose(reply.segments[1].end_s, [2.0, 3.3], atol=1e-3)
    assert info.modality == common_pb2.MODALITY_AUDIO and info.embedding_dim == description.embedding_dim
    assert info.model_id == description.model_id and info.revision.startswith("sha256:")


def test_an_audio_classifier_classifies_and_an_encoder_says_it_cannot(models, served) -> None:
    model, _ = in_process("classifier", models["classifier"])
    channel, stub = stub_of(served["classifier"])
    with channel:
        reply = stub.Classify(audio_pb2.ClassifyAudioRequest(clips=CLIPS[:1], top_k=3), timeout=60)
    (labels,) = reply.results
    assert sorted(s.label for s in labels.labels) == sorted(LABELS)
    scores = [s.score for s in labels.labels]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)  # softmax
    channel, stub = stub_of(served["encoder"])
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Classify(audio_pb2.ClassifyAudioRequest(clips=CLIPS[:1]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no classifier head" in caught.value.details()


def test_the_onnx_models_sample_rate_comes_from_its_metadata(models) -> None:
    model, description = in_process("onnx", models["onnx"])
    assert model.sample_rate_hz == 8_000 and description.embedding_dim == 8 and description.device == "cpu"


def test_a_clap_checkpoint_serves_its_projected_audio_embeddings(tmp_path: Path) -> None:
    model = TransformersAudioModel(str(tiny_clap(tmp_path / "clap")), segment_seconds=2.0, device="cpu")
    description = model.load()
    assert model.kind == "clap" and description.embedding_dim == 8 and not description.labels
    clips = embed_in_process(model, CLIPS, AudioLimits())
    assert clips.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(clips, axis=1), 1.0, atol=1e-5)
    singles = np.vstack([embed_in_process(model, [clip], AudioLimits()) for clip in CLIPS])
    np.testing.assert_allclose(clips, singles, atol=1e-5)
