"""The transformers vision backend on tiny random-weight models saved to temp dirs (no network).

Each model is loaded through the same route the service uses (settings.model = a local
directory -> the registry -> TransformersVisionModel), and its outputs are checked against
the transformers model run directly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    ConvNextImageProcessorPil,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    ViTModel,
)

from services.common import compiled
from services.common.errors import FailedPrecondition
from services.common.settings import VisionSettings
from services.vision.backend import create_model, model_family
from services.vision.preprocessing import ImageTransform, ProcessorTransform
from services.vision.transformers_backend import TransformersVisionModel

SIDE = 30
TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "image_size": SIDE,
    "patch_size": 10,
}
TINY_CLIP_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 99,
    "max_position_embeddings": 20,
    "bos_token_id": 0,
    "eos_token_id": 1,
}
CLIP_PROCESSOR = {"size": {"shortest_edge": SIDE}, "crop_size": {"height": SIDE, "width": SIDE}}
VIT_PROCESSOR = {"size": {"height": SIDE, "width": SIDE}}
LABELS = ("cat", "dog", "bird")


def save(directory: Path, model, processor) -> str:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-vision-models")
    return {
        "clip-vision": save(
            root / "clip-vision",
            CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VIT, projection_dim=16)),
            CLIPImageProcessorPil(**CLIP_PROCESSOR),
        ),
        "clip-full": save(
            root / "clip-full",
            CLIPModel(CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=TINY_VIT, projection_dim=24)),
            CLIPImageProcessorPil(**CLIP_PROCESSOR),
        ),
        "vit": save(root / "vit", ViTModel(ViTConfig(**TINY_VIT)), ViTImageProcessorPil(**VIT_PROCESSOR)),
        "vit-no-pooler": save(
            root / "vit-no-pooler",
            ViTModel(ViTConfig(**TINY_VIT), add_pooling_layer=False),
            ViTImageProcessorPil(**VIT_PROCESSOR),
        ),
        "vit-classifier": save(
            root / "vit-classifier",
            ViTForImageClassification(
                ViTConfig(
                    **TINY_VIT,
                    id2label=dict(enumerate(LABELS)),
                    label2id={n: i for i, n in enumerate(LABELS)},
                )
            ),
            ViTImageProcessorPil(**VIT_PROCESSOR),
        ),
        "vit-placeholder-labels": save(
            root / "vit-placeholder-labels",
            ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=4)),
            ViTImageProcessorPil(**VIT_PROCESSOR),
        ),
        "resnet": save(
            root / "resnet",
            ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])),
            ConvNextImageProcessorPil(size={"shortest_edge": 32}),
        ),
    }


@pytest.fixture(scope="module")
def loaded(model_dirs: dict[str, str]):
    """name -> (backend, description), each loaded once through the service's own route."""
    cache: dict[str, tuple] = {}

    def load(name: str, **overrides: str):
        key = name + repr(sorted(overrides.items()))
        if key not in cache:
            backend = create_model(VisionSettings(model=model_dirs[name], **overrides))
            cache[key] = (backend, backend.load())
        return cache[key]

    return load


def images(count: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 50, 3), dtype=np.uint8)) for i in range(count)]


def batch_for(backend) -> np.ndarray:
    return np.stack([backend.transform(image) for image in images()])


def normalised(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(t.float(), dim=1).numpy()


def test_local_directories_go_through_the_transformers_backend(model_dirs) -> None:
    settings = VisionSettings(model=model_dirs["vit"])
    assert model_family(settings) == "transformers"
    assert isinstance(create_model(settings), TransformersVisionModel)
    assert model_family(VisionSettings()) == "efficientnet-lite"


def test_description_of_a_local_model(loaded, model_dirs) -> None:
    backend, description = loaded("vit-classifier")
    assert description.model_id == model_dirs["vit-classifier"]
    assert description.revision.startswith("sha256:") and len(description.revision) == 19
    assert (description.device, description.dtype) == ("cpu", "float32")
    assert description.labels == LABELS and backend.kind == "classifier"


def test_clip_vision_embeds_in_the_projected_space(loaded, model_dirs) -> None:
    backend, description = loaded("clip-vision")
    assert backend.kind == "clip" and description.embedding_dim == 16
    batch = batch_for(backend)
    vectors = backend.embed(batch)
    reference = CLIPVisionModelWithProjection.from_pretrained(model_dirs["clip-vision"]).eval()
    with torch.no_grad():
        expected = normalised(reference(pixel_values=torch.from_numpy(batch)).image_embeds)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_a_full_clip_checkpoint_loads_its_vision_half_with_the_shared_projection(loaded, model_dirs) -> None:
    backend, description = loaded("clip-full")
    assert backend.kind == "clip" and description.embedding_dim == 24
    batch = batch_for(backend)
    full = CLIPModel.from_pretrained(model_dirs["clip-full"]).eval()
    with torch.no_grad():
        features = full.get_image_features(pixel_values=torch.from_numpy(batch))
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    np.testing.assert_allclose(backend.embed(batch), normalised(features), atol=1e-5)


def test_vit_uses_its_pooler_when_the_checkpoint_has_one(loaded, model_dirs) -> None:
    backend, description = loaded("vit")
    assert backend.kind == "encoder" and description.embedding_dim == 32 and description.labels == ()
    batch = batch_for(backend)
    reference = ViTModel.from_pretrained(model_dirs["vit"]).eval()
    with torch.no_grad():
        expected = normalised(reference(pixel_values=torch.from_numpy(batch)).pooler_output)
    np.testing.assert_allclose(backend.embed(batch), expected, atol=1e-5)


def test_vit_without_pooler_weights_uses_the_cls_token(loaded, model_dirs) -> None:
    backend, _ = loaded("vit-no-pooler")
    batch = batch_for(backend)
    reference = ViTModel.from_pretrained(model_dirs["vit-no-pooler"], add_pooling_layer=False).eval()
    with torch.no_grad():
        expected = normalised(reference(pixel_values=torch.from_numpy(batch)).last_hidden_state[:, 0])
    np.testing.assert_allclose(backend.embed(batch), expected, atol=1e-5)


def test_classifier_returns_its_labels_best_first(loaded, model_dirs) -> None:
    backend, _ = loaded("vit-classifier")
    batch = batch_for(backend)
    reference = ViTForImageClassification.from_pretrained(model_dirs["vit-classifier"]).eval()
    with torch.no_grad():
        probabilities = torch.softmax(reference(pixel_values=torch.from_numpy(batch)).logits, dim=-1).numpy()
    ranked = backend.classify(batch, top_k=2)
    assert len(ranked) == 3
    for row, expected in zip(ranked, probabilities, strict=True):
        order = np.argsort(-expected)[:2]
        assert [label for label, _ in row] == [LABELS[i] for i in order]
        np.testing.assert_allclose([score for _, score in row], expected[order], atol=1e-5)
        assert row[0][1] >= row[1][1] and sum(score for _, score in row) <= 1.0 + 1e-6
    everything = backend.classify(batch, top_k=50)
    assert all(len(row) == 3 for row in everything)
    np.testing.assert_allclose([sum(s for _, s in row) for row in everything], 1.0, atol=1e-5)


def test_classifier_embeds_with_its_base_model(loaded, model_dirs) -> None:
    backend, description = loaded("vit-classifier")
    assert description.embedding_dim == 32
    batch = batch_for(backend)
    reference = ViTForImageClassification.from_pretrained(model_dirs["vit-classifier"]).eval()
    with torch.no_grad():
        expected = normalised(reference.vit(pixel_values=torch.from_numpy(batch)).last_hidden_state[:, 0])
    np.testing.assert_allclose(backend.embed(batch), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["clip-vision", "vit", "vit-placeholder-labels"])
def test_models_without_real_labels_refuse_to_classify(loaded, name: str) -> None:
    backend, description = loaded(name)
    assert description.labels == ()
    with pytest.raises(FailedPrecondition, match="no classifier head"):
        backend.classify(batch_for(backend), top_k=1)


def test_convolutional_encoder_with_a_custom_processor(loaded, model_dirs) -> None:
    backend, description = loaded("resnet")
    assert isinstance(backend.transform, ProcessorTransform) and backend.transform.output_hw == (32, 32)
    assert description.embedding_dim == 16
    batch = batch_for(backend)
    reference = ResNetModel.from_pretrained(model_dirs["resnet"]).eval()
    with torch.no_grad():
        expected = normalised(reference(pixel_values=torch.from_numpy(batch)).pooler_output.flatten(1))
    np.testing.assert_allclose(backend.embed(batch), expected, atol=1e-5)


def test_a_batch_equals_single_images(loaded) -> None:
    backend, _ = loaded("vit-classifier")
    batch = batch_for(backend)
    singles = np.vstack([backend.embed(batch[i : i + 1]) for i in range(len(batch))])
    np.testing.assert_allclose(backend.embed(batch), singles, atol=1e-5)
    assert isinstance(backend.transform, ImageTransform)


def test_dtype_is_overridable(loaded) -> None:
    backend, description = loaded("vit", dtype="bfloat16")
    float32_backend, _ = loaded("vit")
    assert description.dtype == "bfloat16"
    batch = batch_for(backend)
    low, full = backend.embed(batch), float32_backend.embed(batch)
    assert low.dtype == np.float32
    assert np.min(np.sum(low * full, axis=1)) > 0.99


@pytest.mark.parametrize(
    "name", ["clip-vision", "clip-full", "vit", "vit-no-pooler", "vit-classifier", "resnet"]
)
def test_the_embedding_runs_compiled_on_cpu(model_dirs, name: str, caplog) -> None:
    # The tests above compare these embeddings with the transformers models' own, run eagerly.
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        backend = create_model(VisionSettings(model=model_dirs[name]))
        backend.load()
    assert re.search(
        rf"vision model {re.escape(model_dirs[name])} runs on (onnxruntime|torchscript)", caplog.text
    )
    eager = create_model(VisionSettings(model=model_dirs[name], cpu_runtime="eager"))
    eager.load()
    batch = batch_for(backend)
    np.testing.assert_allclose(backend.embed(batch[:1]), eager.embed(batch[:1]), atol=1e-5)
    np.testing.assert_allclose(backend.embed(batch), eager.embed(batch), atol=1e-5)
