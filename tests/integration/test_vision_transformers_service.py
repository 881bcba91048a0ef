"""The vision service with a transformers model from a local directory, as a separate process.

Tiny random-weight models keep it fast and offline; what is checked is the wiring: the local
path route, the model's own labels through Classify, and FAILED_PRECONDITION without a head.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from mmserve.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from scripts.stack import ServiceProcess, start_service
from services.common.matrix import from_matrix
from services.common.settings import VisionSettings
from services.vision.backend import create_model
from services.vision.decoding import ImageLimits
from services.vision.preprocessing import prepare_image
from tests.support.metrics import sample_value, scrape

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "image_size": 30,
    "patch_size": 10,
}
LABELS = ("cat", "dog", "bird")


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [png(seed) for seed in range(4)]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-vision-service-models")
    classifier = root / "vit-classifier"
    config = ViTConfig(
        **TINY_VIT, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    ViTForImageClassification(config).save_pretrained(classifier)
    ViTImageProcessorPil(size={"height": 30, "width": 30}).save_pretrained(classifier)
    clip = root / "clip-vision"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VIT, projection_dim=16)).save_pretrained(clip)
    CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
        clip
    )
    return {"classifier": classifier, "clip": clip}


def _serve(
    model: Path, log_dir: Path
) -> Iterator[tuple[ServiceProcess, vision_pb2_grpc.VisionEncoderServiceStub]]:
    service = start_service("vision", args=["--model", str(model)], log_dir=log_dir)
    try:
        with grpc.insecure_channel(service.address) as channel:
            yield service, vision_pb2_grpc.VisionEncoderServiceStub(channel)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def classifier(model_dirs, log_dir):
    yield from _serve(model_dirs["classifier"], log_dir)


@pytest.fixture(scope="module")
def clip(model_dirs, log_dir):
    yield from _serve(model_dirs["clip"], log_dir)


def test_classifier_serves_its_own_labels(classifier, model_dirs) -> None:
    _, stub = classifier
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert (
        info.model_id == str(model_dirs["classifier"]) and info.num_labels == 3 and info.embedding_dim == 32
    )
    assert info.revision.startswith("sha256:")
    reply = stub.Classify(vision_pb2.ClassifyImageRequest(images=IMAGES, top_k=2), timeout=30)
    assert len(reply.results) == len(IMAGES)
    for result in reply.results:
        scores = [entry.score for entry in result.labels]
        assert len(result.labels) == 2 and {entry.label for entry in result.labels} <= set(LABELS)
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    default = stub.Classify(vision_pb2.ClassifyImageRequest(images=IMAGES[:1]), timeout=30).results[0]
    assert len(default.labels) == 3  # the default 5, capped at the model's 3 labels


def test_served_embeddings_equal_the_in_process_model(classifier, model_dirs) -> None:
    _, stub = classifier
    served = from_matrix(stub.Embed(vision_pb2.EmbedImageRequest(images=IMAGES), timeout=30).embeddings)
    backend = create_model(VisionSettings(model=str(model_dirs["classifier"])))
    backend.load()
    local = backend.embed(
        np.stack([prepare_image(data, ImageLimits(), backend.transform) for data in IMAGES])
    )
    assert served.shape == (len(IMAGES), 32)
    assert np.min(np.sum(served * local, axis=1)) >= 0.9999


def test_a_model_without_labels_refuses_classify(clip, model_dirs) -> None:
    service, stub = clip
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert info.num_labels == 0 and info.embedding_dim == 16
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(vision_pb2.ClassifyImageRequest(images=IMAGES[:1]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no classifier head" in caught.value.details()
    vectors = from_matrix(stub.Embed(vision_pb2.EmbedImageRequest(images=IMAGES[:2]), timeout=30).embeddings)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    warm = scrape(f"http://127.0.0.1:{service.metrics_port}/metrics")
    assert sample_value(warm, "mmserve_inference_duration_seconds_count", task="embed") >= 1
    assert sample_value(warm, "mmserve_batch_size_count", task="classify") == 0
