"""Vision models and the two backends they serve: image embedding and image classification.

A ``VisionModel`` turns a stacked batch of preprocessed images into embeddings and, when it has
a classifier head, into labelled scores; ``ImageEmbedding`` and ``ImageClassification`` are the
ModelBackends the service batches for, sharing one loaded model. Embeddings are L2-normalised
for every model, as the text service's are: dot products are cosine similarities, scales match
the text side for fusion heads, and for CLIP they lie on the same sphere as CLIP text embeddings.

This module imports no torch; the models are imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from services.common.backend import ModelDescription
from services.common.logs import route_library_logs
from services.common.settings import VisionSettings
from services.vision.preprocessing import Preprocessor

LabelScores = list[tuple[str, float]]


class VisionModel(Protocol):
    """A loaded image model. ``embed`` and ``classify`` are one batched forward pass each."""

    @property
    def transform(self) -> Preprocessor:
        """The model's own preprocessing (valid after ``load``)."""
        ...

    def load(self) -> ModelDescription:
        """Loads weights and preprocessing config (blocking, idempotent)."""
        ...

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, dim) float32, L2-normalised rows."""
        ...

    def classify(self, batch: np.ndarray, top_k: int) -> list[LabelScores]:
        """(N, 3, H, W) -> per image the ``top_k`` best (label, score), best first.

        Raises FailedPrecondition when the model has no classifier head.
        """
        ...


class ImageEmbedding:
    """ModelBackend: preprocessed images (3, H, W) -> embedding rows."""

    parallel_forward = True  # torch inference holds no per-call state

    def __init__(self, model: VisionModel) -> None:
        self.model = model

    def load(self) -> ModelDescription:
        return self.model.load()

    def item_cost(self, pixels: np.ndarray) -> int:
        return 1

    def process(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return self.model.embed(np.stack(items))


class ImageClassification:
    """ModelBackend: (preprocessed image, top_k) -> that image's top_k labels with scores."""

    parallel_forward = True  # torch inference holds no per-call state

    def __init__(self, model: VisionModel) -> None:
        self.model = model

    def load(self) -> ModelDescription:
        return self.model.load()

    def item_cost(self, item: tuple[np.ndarray, int]) -> int:
        return 1

    def process(self, items: Sequence[tuple[np.ndarray, int]]) -> list[LabelScores]:
        top_k = max(k for _, k in items)
        ranked = self.model.classify(np.stack([pixels for pixels, _ in items]), top_k)
        return [labels[:k] for labels, (_, k) in zip(ranked, items, strict=True)]


def _efficientnet(settings: VisionSettings) -> VisionModel:
    from services.vision.efficientnet_lite import EfficientNetLiteModel

    return EfficientNetLiteModel(
        device=settings.device, dtype=settings.dtype, cpu_runtime=settings.cpu_runtime
    )


def _transformers(settings: VisionSettings) -> VisionModel:
    from services.vision.transformers_backend import TransformersVisionModel

    route_library_logs()  # transformers is imported just now

    return TransformersVisionModel(
        settings.model,
        revision=settings.revision,
        device=settings.device,
        dtype=settings.dtype,
        cpu_runtime=settings.cpu_runtime,
    )


DEFAULT_MODEL = "efficientnet-lite0"

# Explicit name -> factory: a service picks its model by settings, never by magic.
MODEL_FACTORIES: dict[str, Callable[[VisionSettings], VisionModel]] = {
    "efficientnet-lite": _efficientnet,
    "transformers": _transformers,
}


def model_family(settings: VisionSettings) -> str:
    """The packaged EfficientNet-Lite0 when no model is named; any other model goes through transformers."""
    return "efficientnet-lite" if settings.model in ("", DEFAULT_MODEL) else "transformers"


def create_model(settings: VisionSettings) -> VisionModel:
    return MODEL_FACTORIES[model_family(settings)](settings)
