"""Any transformers image model, from a local directory or a hub id.

What runs is decided from the checkpoint's config:

- CLIP (``model_type`` clip or clip_vision_model): the vision tower with its projection; the
  embedding is ``image_embeds``, the space CLIP's text tower projects into. A full CLIP
  checkpoint works too: only the vision half is loaded.
- Image classifiers (an ``*ForImageClassification`` architecture whose ``id2label`` holds
  real names, not LABEL_0...): Classify returns those labels; the embedding is the pooled
  output of the classifier's base model.
- Any other image encoder (ViT, DINOv2, ConvNeXt, ...) through AutoModel; no Classify.

Pooling, when there is no projection: the model's ``pooler_output`` if its weights came from
the checkpoint; else the CLS token of a token sequence, or the spatial mean of a feature map.
Preprocessing uses the checkpoint's image processor config (size, crop, mean, std).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from services.common.backend import ModelDescription, loads_once
from services.common.compiled import check_runtime
from services.common.device import dtype_name, resolve_device
from services.common.errors import FailedPrecondition, NotReady
from services.common.labels import real_labels
from services.common.model_source import model_revision
from services.vision.backend import LabelScores
from services.vision.preprocessing import Preprocessor, transform_for_processor
from services.vision.torch_common import (
    compiled_pixels_forward,
    device_name,
    normalised_rows,
    to_input,
    top_labels,
)

_LOGGER = logging.getLogger(__name__)

CLIP_MODEL_TYPES = frozenset({"clip", "clip_vision_model"})


def model_kind(config: Any) -> str:
    """'clip', 'classifier' or 'encoder' (see the module docstring)."""
    if config.model_type in CLIP_MODEL_TYPES:
        return "clip"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForImageClassification") for a in architectures) and real_labels(config):
        return "classifier"
    return "encoder"


class TransformersVisionModel:
    """A transformers image model as a vision backend (see the module docstring)."""

    def __init__(
        self,
        model: str,
        revision: str = "",
        device: str = "auto",
        dtype: str = "auto",
        cpu_runtime: str = "onnxruntime",
    ) -> None:
        if not model:
            raise ValueError("a model directory or hub id is required")
        check_runtime(cpu_runtime)
        self._source = model
        self._revision = revision
        self._device, self._dtype = resolve_device(device, dtype)
        self._cpu_runtime = cpu_runtime
        self._model: Any = None
        self._pooled_embedding: Any = None
        self._transform: Preprocessor | None = None
        self._kind = ""
        self._labels: list[str] = []
        self._multi_label = False
        self._use_pooler = True

    @property
    def transform(self) -> Preprocessor:
        if self._transform is None:
            raise NotReady("the vision model is not loaded")
        return self._transform

    @property
    def kind(self) -> str:
        return self._kind

    @loads_once
    def load(self) -> ModelDescription:
        kwargs = {"revision": self._revision} if self._revision else {}
        config = AutoConfig.from_pretrained(self._source, **kwargs)
        self._kind = model_kind(config)
        try:
            processor = AutoImageProcessor.from_pretrained(self._source, **kwargs)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{self._source} has no usable image processor config: {exc}") from exc
        self._transform = transform_for_processor(processor)
        model, info = self._load_model(config, kwargs)
        self._model = model.to(self._device).eval()
        # A pooler the checkpoint did not contain is freshly random: pool the tokens instead.
        self._use_pooler = not any("pooler" in key for key in info.get("missing_keys", ()))
        self._pooled_embedding = _PooledEmbedding(self._model, self._kind, self._use_pooler).eval()
        if self._device.type == "cpu" and self._dtype == torch.float32:
            self._pooled_embedding = (
                compiled_pixels_forward(
                    self._pooled_embedding,
                    self._transform.output_hw,
                    self._cpu_runtime,
                    f"vision model {self._source}",
                )
                or self._pooled_embedding
            )
        if self._kind == "classifier":
            self._labels = real_labels(model.config)
            self._multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
        height, width = self._transform.output_hw
        try:
            dim = self.embed(np.zeros((1, 3, height, width), dtype=np.float32)).shape[1]
        except Exception as exc:
            raise RuntimeError(f"{self._source} does not run as an image encoder: {exc}") from exc
        revision = getattr(config, "_commit_hash", None) or model_revision(self._source, self._revision)
        _LOGGER.info(
            "loaded %s",
            self._source,
            extra={"fields": {"kind": self._kind, "dim": dim, "labels": len(self._labels)}},
        )
        return ModelDescription(
            model_id=self._source,
            revision=revision,
            embedding_dim=int(dim),
            device=device_name(self._device),
            dtype=dtype_name(self._dtype),
            labels=tuple(self._labels),
        )

    def _load_model(self, config: Any, kwargs: dict[str, str]) -> tuple[Any, dict]:
        common = {"dtype": self._dtype, "output_loading_info": True, **kwargs}
        if self._kind == "clip":
            from transformers import CLIPVisionModelWithProjection

            vision_config = config
            if config.model_type == "clip":
                # The projection size lives on the top-level config of a full CLIP checkpoint.
                vision_config = config.vision_config
                vision_config.projection_dim = config.projection_dim
            return CLIPVisionModelWithProjection.from_pretrained(self._source, config=vision_config, **common)
        if self._kind == "classifier":
            return AutoModelForImageClassification.from_pretrained(self._source, **common)
        return AutoModel.from_pretrained(self._source, **common)

    def _pooled(self, batch: np.ndarray) -> torch.Tensor:
        if self._pooled_embedding is None:
            raise NotReady("the vision model is not loaded")
        return self._pooled_embedding(to_input(batch, self._device, self._dtype))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return normalised_rows(self._pooled(batch))

    def classify(self, batch: np.ndarray, top_k: int) -> list[LabelScores]:
        if not self._labels:
            raise FailedPrecondition(f"{self._source} has no classifier head with labels; use Embed")
        with torch.inference_mode():
            logits = self._model(pixel_values=to_input(batch, self._device, self._dtype)).logits
            return top_labels(logits, self._labels, top_k, multi_label=self._multi_label)


class _PooledEmbedding(torch.nn.Module):
    """Pixels -> the embedding as the model kind defines it (what a CPU runtime compiles): CLIP's
    projected image embedding; else the pooler's output when the checkpoint has a pooler, the
    mean of a convolutional encoder's last feature map, or the [CLS] token."""

    def __init__(self, model: torch.nn.Module, kind: str, use_pooler: bool) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.use_pooler = use_pooler

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "clip":
            return self.model(pixel_values=pixel_values).image_embeds
        encoder = self.model.base_model if self.kind == "classifier" else self.model
        outputs = encoder(pixel_values=pixel_values)
        pooled = getattr(outputs, "pooler_output", None) if self.use_pooler else None
        if pooled is not None:
            return pooled.flatten(start_dim=1)
        hidden = outputs.last_hidden_state
        if hidden.ndim == 4:  # (N, C, H, W) feature map of a convolutional encoder
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0]  # the CLS token
