"""Any transformers audio model, from a local directory or a hub id (MMSERVE_AUDIO_MODEL).

What runs is decided from the checkpoint's config:

- CLAP (``model_type`` clap): the audio tower with its projection (``get_audio_features``), the
  space CLAP's text tower projects into.
- Audio classifiers (an ``*ForAudioClassification`` / ``*ForSequenceClassification``
  architecture whose ``id2label`` holds real names): Classify returns those labels (softmax, or
  sigmoids for a multi-label ``problem_type``); the embedding is the mean of the last hidden
  states.
- Any other audio encoder (wav2vec2, HuBERT, WavLM, Whisper's encoder is not one: it needs
  30 s windows) through AutoModel: the mean of ``last_hidden_state`` over time.

Inputs go through the checkpoint's own feature extractor at its ``sampling_rate``. Clips are cut
into windows of ``segment_seconds``; windows of equal length run as one batch, others alone, so
no window is ever padded and a batch answers exactly what single calls would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

from services.audio.backend import SegmentOutputs
from services.audio.features import Segment, window_segments
from services.common.backend import ModelDescription, loads_once
from services.common.device import dtype_name, resolve_device
from services.common.errors import NotReady
from services.common.labels import real_labels
from services.common.model_source import model_revision

_LOGGER = logging.getLogger(__name__)

CLAP_MODEL_TYPES = frozenset({"clap"})
_CLASSIFIER_SUFFIXES = ("ForAudioClassification", "ForSequenceClassification")


def model_kind(config: Any) -> str:
    """'clap', 'classifier' or 'encoder' (see the module docstring)."""
    if config.model_type in CLAP_MODEL_TYPES:
        return "clap"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(_CLASSIFIER_SUFFIXES) for a in architectures) and real_labels(config):
        return "classifier"
    return "encoder"


class TransformersAudioModel:
    """A transformers audio model as an AudioModel (see the module docstring)."""

    def __init__(
        self,
        model: str,
        revision: str = "",
        segment_seconds: float = 10.0,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        if not model:
            raise ValueError("a model directory or hub id is required")
        self._source = model
        self._revision = revision
        self._segment_s = segment_seconds
        self._device, self._dtype = resolve_device(device, dtype)
        self._model: Any = None
        self._extractor: Any = None
        self._kind = ""
        self._multi_label = False
        self.labels: list[str] = []
        self.sample_rate_hz = 16_000

    @property
    def kind(self) -> str:
        return self._kind

    @loads_once
    def load(self) -> ModelDescription:
        kwargs = {"revision": self._revision} if self._revision else {}
        config = AutoConfig.from_pretrained(self._source, **kwargs)
        self._kind = model_kind(config)
        self._extractor = AutoFeatureExtractor.from_pretrained(self._source, **kwargs)
        self.sample_rate_hz = int(self._extractor.sampling_rate)
        if self._kind == "clap":
            from transformers import ClapModel

            model = ClapModel.from_pretrained(self._source, **kwargs)
            dim = int(config.projection_dim)
        elif self._kind == "classifier":
            model = AutoModelForAudioClassification.from_pretrained(self._source, **kwargs)
            self.labels = real_labels(config)
            self._multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
            dim = int(config.hidden_size)
        else:
            model = AutoModel.from_pretrained(self._source, **kwargs)
            dim = int(config.hidden_size)
        self._model = model.to(device=self._device, dtype=self._dtype).eval()
        _LOGGER.info("loaded %s (%s, %d Hz)", self._source, self._kind, self.sample_rate_hz)
        return ModelDescription(
            model_id=self._source,
            revision=model_revision(self._source, self._revision),
            embedding_dim=dim,
            device=str(self._device),
            dtype=dtype_name(self._dtype),
            labels=tuple(self.labels),
        )

    def segments(self, waveform: np.ndarray) -> list[Segment]:
        return window_segments(waveform, self.sample_rate_hz, self._segment_s)

    def segment_cost(self, data: np.ndarray) -> int:
        return 1

    def forward(self, batch: Sequence[np.ndarray]) -> SegmentOutputs:
        if self._model is None:
            raise NotReady("the audio model is not loaded")
        embeddings: list[np.ndarray | None] = [None] * len(batch)
        scores: list[np.ndarray | None] = [None] * len(batch)
        by_length: dict[int, list[int]] = {}
        for index, data in enumerate(batch):
            by_length.setdefault(len(data), []).append(index)
        with torch.inference_mode():
            for indices in by_length.values():
                group_embeddings, group_scores = self._run([batch[i] for i in indices])
                for position, index in enumerate(indices):
                    embeddings[index] = group_embeddings[position]
                    if group_scores is not None:
                        scores[index] = group_scores[position]
        return SegmentOutputs(
            embeddings=np.stack(embeddings).astype(np.float32),
            scores=np.stack(scores).astype(np.float32) if self.labels else None,
        )

    def _run(self, waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        inputs = self._extractor(waves, sampling_rate=self.sample_rate_hz, return_tensors="pt")
        inputs = {
            name: value.to(self._device, dtype=self._dtype if value.is_floating_point() else value.dtype)
            for name, value in inputs.items()
        }
        if self._kind == "clap":
            features = self._model.get_audio_features(**inputs)
            features = getattr(features, "pooler_output", features)  # an output object in newer releases
            return features.float().cpu().numpy(), None
        if self._kind == "classifier":
            output = self._model(**inputs, output_hidden_states=True)
            logits = output.logits.float()
            probabilities = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
            pooled = output.hidden_states[-1].float().mean(dim=1)
            return pooled.cpu().numpy(), probabilities.cpu().numpy()
        hidden = self._model(**inputs).last_hidden_state.float()
        return hidden.mean(dim=1).cpu().numpy(), None
