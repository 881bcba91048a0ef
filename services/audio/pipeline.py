"""The one path from encoded audio to model inputs, and from segment outputs to clip results.

The audio service, the benchmarks and the tests all prepare clips here (decode -> mono ->
resample to the model's rate -> segments) and pool with ``backend.pool_embeddings``, so an
embedding computed in-process is the one that is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.audio.backend import AudioModel, pool_embeddings
from services.audio.decoding import AudioLimits, decode_audio
from services.audio.features import Segment
from services.common.errors import InvalidInput


@dataclass(frozen=True)
class PreparedClip:
    segments: list[Segment]
    duration_s: float


def prepare_clip(data: bytes, limits: AudioLimits, model: AudioModel) -> PreparedClip:
    """Encoded bytes -> the clip's segments; raises only InvalidInput for bad bytes."""
    waveform = decode_audio(data, limits, model.sample_rate_hz)
    return PreparedClip(model.segments(waveform), waveform.size / model.sample_rate_hz)


def prepare_clips(clips: Sequence[bytes], limits: AudioLimits, model: AudioModel) -> list[PreparedClip]:
    """Each clip prepared; a bad clip raises InvalidInput naming its index."""
    prepared = []
    for index, data in enumerate(clips):
        try:
            prepared.append(prepare_clip(data, limits, model))
        except InvalidInput as exc:
            raise InvalidInput(f"clips[{index}]: {exc}") from None
    return prepared


def split_rows(rows: np.ndarray, clips: Sequence[PreparedClip]) -> list[np.ndarray]:
    """Rows for all clips' segments, in order -> one block of rows per clip."""
    bounds = np.cumsum([len(clip.segments) for clip in clips])[:-1]
    return np.split(np.asarray(rows), bounds)


def embed_in_process(model: AudioModel, clips: Sequence[bytes], limits: AudioLimits) -> np.ndarray:
    """(len(clips), dim) clip embeddings computed here, in one forward pass, as the service computes them."""
    prepared = prepare_clips(clips, limits, model)
    rows = model.forward([s.data for clip in prepared for s in clip.segments]).embeddings
    return np.stack([pool_embeddings(block) for block in split_rows(rows, prepared)])
