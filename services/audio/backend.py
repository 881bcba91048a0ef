"""Audio models and the two backends they serve: segment embedding and segment classification.

An ``AudioModel`` cuts a clip (a mono waveform at its own sample rate) into segments, the units
one forward pass batches (YAMNet: 0.96 s log-mel patches every 0.48 s; waveform models: windows
of ``segment_seconds``), and runs a batch of segments into raw embedding rows and, when it has
a classifier, per-label scores. ``AudioEmbedding`` and ``AudioClassification`` are the
ModelBackends the service batches for, sharing one loaded model. A clip's embedding is the mean
of its segments' rows, L2-normalised like every other encoder's; its label scores are the mean
of its segments' scores (``pool_embeddings`` / ``pool_scores``, shared by serving, benchmarks
and tests).

This module imports neither onnxruntime nor torch; the models are imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from services.audio.features import Segment
from services.common.backend import ModelDescription
from services.common.errors import FailedPrecondition
from services.common.logs import route_library_logs
from services.common.pooling import mean_pooled
from services.common.settings import AudioSettings

LabelScores = list[tuple[str, float]]


@dataclass(frozen=True)
class SegmentOutputs:
    """One forward pass: raw embedding rows and, for models with labels, per-label scores."""

    embeddings: np.ndarray  # (N, dim) float32, not normalised
    scores: np.ndarray | None  # (N, num_labels) float32 probabilities, or None


class AudioModel(Protocol):
    """A loaded audio model; ``forward`` is one batched pass over prepared segments."""

    @property
    def sample_rate_hz(self) -> int:
        """The rate clips are resampled to before ``segments``."""
        ...

    def load(self) -> ModelDescription:
        """Loads weights (blocking, idempotent)."""
        ...

    def segments(self, waveform: np.ndarray) -> list[Segment]:
        """A mono float32 waveform at ``sample_rate_hz`` -> the model inputs it is cut into."""
        ...

    def segment_cost(self, data: np.ndarray) -> int:
        """Relative cost of one segment for the batcher's budget."""
        ...

    def forward(self, batch: Sequence[np.ndarray]) -> SegmentOutputs:
        """Segments' data -> their outputs, one row each, in order."""
        ...


class AudioEmbedding:
    """ModelBackend: a segment's data -> its raw embedding row."""

    parallel_forward = True  # onnxruntime sessions and torch inference hold no per-call state

    def __init__(self, model: AudioModel) -> None:
        self.model = model

    def load(self) -> ModelDescription:
        return self.model.load()

    def item_cost(self, data: np.ndarray) -> int:
        return self.model.segment_cost(data)

    def process(self, items: Sequence[np.ndarray]) -> np.ndarray:
        return self.model.forward(items).embeddings


class AudioClassification:
    """ModelBackend: a segment's data -> its per-label scores."""

    parallel_forward = True

    def __init__(self, model: AudioModel) -> None:
        self.model = model

    def load(self) -> ModelDescription:
        return self.model.load()

    def item_cost(self, data: np.ndarray) -> int:
        return self.model.segment_cost(data)

    def process(self, items: Sequence[np.ndarray]) -> np.ndarray:
        scores = self.model.forward(items).scores
        if scores is None:
            raise FailedPrecondition("the audio model has no classifier head; use Embed")
        return scores


def pool_embeddings(rows: np.ndarray) -> np.ndarray:
    """A clip's embedding from its segments' raw rows: their mean, L2-normalised."""
    return mean_pooled(rows)


def pool_scores(rows: np.ndarray) -> np.ndarray:
    """A clip's label scores from its segments' scores: their mean (YAMNet's clip-level scoring)."""
    return np.asarray(rows, dtype=np.float32).mean(axis=0)


def top_labels(scores: np.ndarray, labels: Sequence[str], top_k: int) -> LabelScores:
    """The ``top_k`` best (label, score) of one clip, best first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")[: max(1, min(top_k, len(labels)))]
    return [(labels[i], float(scores[i])) for i in order]


def onnx_threads(settings: AudioSettings) -> int:
    """Intra-op threads of each ONNX forward pass: the CPUs shared among the forward lanes
    (services/common/batcher.py); onnxruntime takes them per session, at load."""
    from services.common.device import forward_lanes, threads_per_lane
    from services.common.onnx_session import runs_on_gpu

    lanes = forward_lanes(settings.forward_lanes, runs_on_gpu(settings.device))
    return threads_per_lane(settings.torch_threads, lanes)


def _yamnet(settings: AudioSettings) -> AudioModel:
    from services.audio.yamnet import YamnetModel

    return YamnetModel(device=settings.device, dtype=settings.dtype, threads=onnx_threads(settings))


def _onnx(settings: AudioSettings) -> AudioModel:
    from services.audio.onnx_waveform import OnnxWaveformModel

    return OnnxWaveformModel(
        settings.model,
        segment_seconds=settings.segment_seconds,
        device=settings.device,
        dtype=settings.dtype,
        threads=onnx_threads(settings),
    )


def _transformers(settings: AudioSettings) -> AudioModel:
    from services.audio.transformers_backend import TransformersAudioModel

    route_library_logs()  # transformers is imported just now

    return TransformersAudioModel(
        settings.model,
        revision=settings.revision,
        segment_seconds=settings.segment_seconds,
        device=settings.device,
        dtype=settings.dtype,
    )


DEFAULT_MODEL = "yamnet"

# Explicit name -> factory: a service picks its model by settings, never by magic.
MODEL_FACTORIES: dict[str, Callable[[AudioSettings], AudioModel]] = {
    "yamnet": _yamnet,
    "onnx": _onnx,
    "transformers": _transformers,
}


def model_family(settings: AudioSettings) -> str:
    """The packaged YAMNet when no model is named; a ``.onnx`` file runs on onnxruntime; anything
    else (a directory or a hub id) goes through transformers."""
    if settings.model in ("", DEFAULT_MODEL):
        return "yamnet"
    if Path(settings.model).suffix.lower() == ".onnx":
        return "onnx"
    return "transformers"


def create_model(settings: AudioSettings) -> AudioModel:
    return MODEL_FACTORIES[model_family(settings)](settings)
