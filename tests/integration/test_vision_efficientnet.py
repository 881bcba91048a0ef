"""The default EfficientNet-Lite0 backend in-process: pooling, head and labels as the model defines
them, on every CPU runtime (onnxruntime by default) as on the eager model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from services.common import compiled
from services.common.settings import VisionSettings
from services.vision.backend import create_model
from services.vision.efficientnet_lite import EfficientNetLiteModel, imagenet_labels


@pytest.fixture(scope="module")
def backend() -> EfficientNetLiteModel:
    loaded = EfficientNetLiteModel(device="cpu", dtype="float32")
    loaded.description = loaded.load()
    return loaded


@pytest.fixture(scope="module")
def batch(backend: EfficientNetLiteModel) -> np.ndarray:
    rng = np.random.default_rng(11)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (180 + 20 * i, 240, 3), dtype=np.uint8)) for i in range(3)
    ]
    return np.stack([backend.transform(picture) for picture in pictures])


def test_description(backend: EfficientNetLiteModel) -> None:
    description = backend.description
    assert description.model_id == "efficientnet-lite0" and description.embedding_dim == 1280
    assert (description.device, description.dtype) == ("cpu", "float32")
    assert description.revision.startswith("sha256:") and len(description.labels) == 1000
    assert description.labels[1] == "goldfish" and description.labels == tuple(imagenet_labels())


def test_head_on_the_pooled_features_is_the_models_own_forward(backend, batch) -> None:
    # The embedding is the vector the model's classifier reads: same pooling, nothing after it.
    with torch.inference_mode():
        own = backend._model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(backend.logits(batch).numpy(), own, atol=1e-4)


def test_embeddings_are_the_normalised_pooled_features(backend, batch) -> None:
    vectors = backend.embed(batch)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        features = backend._model.extract_features(torch.from_numpy(batch)).mean(dim=(2, 3))
    expected = torch.nn.functional.normalize(features, dim=1).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_classify_is_softmax_top_k(backend, batch) -> None:
    probabilities = torch.softmax(backend.logits(batch), dim=-1).numpy()
    for row, expected in zip(backend.classify(batch, top_k=4), probabilities, strict=True):
        order = np.argsort(-expected)[:4]
        assert [label for label, _ in row] == [backend.description.labels[i] for i in order]
        np.testing.assert_allclose([score for _, score in row], expected[order], atol=1e-5)


@pytest.fixture(scope="module")
def eager() -> EfficientNetLiteModel:
    loaded = EfficientNetLiteModel(device="cpu", dtype="float32", cpu_runtime="eager")
    loaded.load()
    return loaded


@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
def test_a_compiled_runtime_embeds_and_classifies_like_the_eager_model(
    runtime: str, batch: np.ndarray, eager: EfficientNetLiteModel, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        model = EfficientNetLiteModel(device="cpu", dtype="float32", cpu_runtime=runtime)
        model.load()
    assert f"vision model efficientnet-lite0 runs on {runtime}" in caplog.text
    for rows in (batch[:1], batch, np.concatenate([batch, batch[::-1]])):  # batch sizes 1, 3, 6
        np.testing.assert_allclose(model.embed(rows), eager.embed(rows), atol=1e-5)
        np.testing.assert_allclose(model.logits(rows).numpy(), eager.logits(rows).numpy(), atol=1e-4)


def test_a_runtime_that_fails_gives_way_to_the_next(
    batch: np.ndarray, eager: EfficientNetLiteModel, monkeypatch, caplog
) -> None:
    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot export this model")

    monkeypatch.setitem(compiled.RUNTIMES, "onnxruntime", refuse)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        model = EfficientNetLiteModel(device="cpu", dtype="float32")
        model.load()
    assert "vision model efficientnet-lite0 not on onnxruntime: it failed (RuntimeError" in caplog.text
    assert "runs on torchscript" in caplog.text
    np.testing.assert_allclose(model.embed(batch), eager.embed(batch), atol=1e-5)


def test_the_setting_reaches_the_model_and_unknown_runtimes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown CPU runtime 'tensorrt'; choose from onnxruntime"):
        create_model(VisionSettings(cpu_runtime="tensorrt"))
