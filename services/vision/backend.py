"""The vision backend interface and the explicit registry that picks one from settings.

Every backend turns a stacked batch of preprocessed images into embeddings and, when the
model has a classifier head, into labelled scores. Embeddings are L2-normalised for every
backend, as the text service's are: dot products are cosine similarities, scales match the
text side for fusion heads, and for CLIP they lie on the same sphere as CLIP text embeddings.

This module imports no torch; the implementations are imported only when chosen.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from PIL import Image

from services.common.backend import BackendRegistry, ModelDescription
from services.common.settings import VisionSettings
from services.vision.preprocessing import Preprocessor

LabelScores = list[tuple[str, float]]


class VisionBackend(Protocol):
    """A loaded image model. ``embed`` and ``classify`` are one batched forward pass each."""

    @property
    def transform(self) -> Preprocessor:
        """The model's own preprocessing (valid after ``load``)."""
        ...

    def load(self) -> ModelDescription:
        """Loads weights and preprocessing config (blocking); called once before SERVING."""
        ...

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32 (3, H, W) input for this model."""
        ...

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, dim) float32, L2-normalised rows."""
        ...

    def classify(self, batch: np.ndarray, top_k: int) -> list[LabelScores]:
        """(N, 3, H, W) -> per image the ``top_k`` best (label, score), best first.

        Raises FailedPrecondition when the model has no classifier head.
        """
        ...


def _efficientnet(settings: VisionSettings) -> VisionBackend:
    from services.vision.efficientnet_lite import EfficientNetLiteBackend

    return EfficientNetLiteBackend(device=settings.device, dtype=settings.dtype)


def _transformers(settings: VisionSettings) -> VisionBackend:
    from services.vision.transformers_backend import TransformersVisionBackend

    return TransformersVisionBackend(
        settings.model, revision=settings.revision, device=settings.device, dtype=settings.dtype
    )


DEFAULT_MODEL = "efficientnet-lite0"

BACKENDS: BackendRegistry = BackendRegistry(
    factories={"efficientnet-lite": _efficientnet, "transformers": _transformers}
)


def backend_name(settings: VisionSettings) -> str:
    """The packaged EfficientNet-Lite0 when no model is named; any other model goes through transformers."""
    return "efficientnet-lite" if settings.model in ("", DEFAULT_MODEL) else "transformers"


def create_backend(settings: VisionSettings) -> VisionBackend:
    return BACKENDS.create(backend_name(settings), settings)
